# The releases built on the control plane's module graph (hack/build-cluster-bins.sh): one Go module builds
# Kubernetes, kwok and Helm, and a copy of it etcd. Sourced by build-cluster-bins.sh and build-helm.sh,
# before they name their cache folders. Each version can be overridden from the environment.
# shellcheck shell=bash
K8S_VERSION="${K8S_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
HELM_VERSION="${HELM_VERSION:-v4.3.1}"
