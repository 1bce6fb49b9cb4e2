"""The AMD SEV-SNP evidence family: the AMD chain (pinned roots, VCEK/VLEK), report
verification, claims, the ``snp:`` policy section and its appraisal; ``tee.py`` is its
registry entry."""
