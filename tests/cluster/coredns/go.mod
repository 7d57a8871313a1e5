// Builds CoreDNS (the plugins in main.go) at the version in ../versions.env.
module raykube.io/cluster/coredns

go 1.26.0

require github.com/coredns/coredns v1.14.7
