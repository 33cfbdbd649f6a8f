//go:build tools

// Package tools pins kube-apiserver and kube-controller-manager, built from
// the module proxy for the integration suite.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
