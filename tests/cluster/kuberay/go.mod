// Builds the KubeRay operator at the version in ../versions.env (its CRDs come from the
// same module version).
module raykube.io/cluster/kuberay

go 1.26.0

require github.com/ray-project/kuberay/ray-operator v1.6.2
