"""Workloads: the DL zoo, seeded random pipelines and user pipeline files, addressed by URIs."""
