"""Traffic policy: the routing users ask for (Istio VirtualServices), composed with placement."""
