// CoreDNS for the real node (tests/node/node.sh), built from its Go module at the version
// in ../versions.env with only the plugins the node's Corefile uses: the kubernetes plugin
// answers cluster.local names from the API server; nothing is forwarded upstream (pods get
// no DNS beyond the cluster). CoreDNS's own main imports every plugin, including the cloud
// providers' SDKs; this one compiles in a fraction of the time.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
)

// The order plugins run in, as in CoreDNS's plugin.cfg (a subset of it).
var directives = []string{"bind", "ready", "health", "errors", "cache", "kubernetes"}

func init() { dnsserver.Directives = directives }

func main() { coremain.Run() }
