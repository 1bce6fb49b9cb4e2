# Sourced by test.sh and demo.sh: install the Debian packages named in the arguments' checks
# when missing (`apt-get update` once, then only what is missing). Usage:
#   . scripts/debian-packages.sh softhsm tpm
# softhsm: SoftHSM2 (the PKCS#11 KEK); tpm: swtpm with its EK CA tools and the tpm2 libraries
# tpm2-pytss builds against; postgres: the PostgreSQL server (the tests start a throwaway
# cluster of their own; the package's default cluster is not used).
missing=()
for want in "$@"; do
  case "$want" in
    softhsm) command -v softhsm2-util >/dev/null 2>&1 || missing+=(softhsm2) ;;
    tpm)
      command -v swtpm >/dev/null 2>&1 || missing+=(swtpm)
      command -v swtpm_setup >/dev/null 2>&1 || missing+=(swtpm-tools)
      pkg-config --exists tss2-esys tss2-tctildr 2>/dev/null || missing+=(libtss2-dev pkg-config)
      ;;
    postgres)
      compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
      ;;
  esac
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
