// Package harness starts real Kubernetes and OIDC components for
// clustral's end-to-end tests: etcd, kube-apiserver,
// kube-controller-manager, Dex and KWOK, each on 127.0.0.1 with free
// ports, in a temporary directory, logging to a file whose tail is shown
// when something fails.
//
// An Env bundles the components. Start (for TestMain; see Main) and New
// (per test, stopped by t.Cleanup) create one; Env.Close stops it. The
// components can also be started one by one (StartEtcd, StartAPIServer,
// StartControllerManager, StartDex, StartKWOK); each has a Close.
//
// Processes run in their own process group with Pdeathsig set, are
// stopped with SIGTERM and then SIGKILL of the group, and die with the
// test binary if it crashes. Readiness is polled, never slept for.
//
// For packages that run a whole clustral mesh per test, MeshMain is the
// TestMain and MeshSuite starts coordinators, agents and users (TestUser)
// bound to a test; BackgroundKubectl reads a running kubectl's output.
// Helm runs helm, and StartK9s runs k9s in a tmux pane whose screen the
// test reads.
//
// Component binaries come from ../components/build.sh (see Binary), which
// the harness runs when one is missing.
package harness
