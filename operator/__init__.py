"""The kopf operator that reconciles DistillationJobs into KubeRay RayJobs. Imports neither torch nor ray."""
