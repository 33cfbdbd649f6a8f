// Package integration holds clustral's end-to-end tests. They run real
// processes: etcd, kube-apiserver, kube-controller-manager, Dex, KWOK, the
// installed kubectl and the clustral binary, all on 127.0.0.1. The
// components are built once by components/build.sh into a cache outside
// the clone.
package integration
