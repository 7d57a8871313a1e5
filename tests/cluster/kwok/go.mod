// Builds kwok (simulated nodes and pods) at the version in ../versions.env.
module raykube.io/cluster/kwok

go 1.26.0

require sigs.k8s.io/kwok v0.8.0
