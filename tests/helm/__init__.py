"""The Dockerfile and the Helm chart, checked without a container engine or a cluster (.ci/chart-checks)."""
