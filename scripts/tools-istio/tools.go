//go:build tools

// Package tools pins the Istio programs built by this module (istioctl, istiod, the
// gateway agent); a module of its own, so that its dependencies never move the Kubernetes ones.
package tools

import (
	_ "istio.io/istio/istioctl/cmd/istioctl"
	_ "istio.io/istio/pilot/cmd/pilot-agent"
	_ "istio.io/istio/pilot/cmd/pilot-discovery"
)
