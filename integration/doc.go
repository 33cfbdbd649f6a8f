// Package integration holds clustral's end-to-end tests. They run real
// processes: etcd, kube-apiserver, kube-controller-manager, Dex, KWOK, the
// clients helm and k9s (k9s in a tmux pane; tmux must be installed), the
// installed kubectl and the clustral binary, all on 127.0.0.1. The
// components are built once by components/build.sh into a cache outside
// the clone.
//
// # Running
//
//	cd integration
//	./components/build.sh   # one time, ~30 minutes on 2 cores; idempotent
//	go test ./...
//
// The harness runs build.sh itself when a component is missing, but the
// first build is longer than go test's default timeout. Binaries live in
// $CLUSTRAL_TEST_BIN, else $XDG_CACHE_HOME/clustral/test-bin, else
// ~/.cache/clustral/test-bin (`components/build.sh --print`). Set
// CLUSTRAL_TEST_KEEP=1 to keep a package environment's directory (logs,
// kubeconfigs, certificates) after the run.
//
// # Writing tests with the harness
//
// Package harness starts the components. Starting kube-apiserver takes
// seconds, so share one environment per test package from TestMain:
//
//	var env *harness.Env
//
//	func TestMain(m *testing.M) {
//		opts := harness.Options{
//			APIServer: harness.APIServerOptions{Identities: []harness.Identity{
//				{Token: "agent-token", User: "clustral-agent"},
//			}},
//			Dex: &harness.DexOptions{
//				Users:   []harness.DexUser{{Email: "alice@example.com", Password: "pw", Groups: []string{"dev"}}},
//				Clients: []harness.DexClient{{ID: "clustral", Secret: "s", RedirectURIs: []string{"https://127.0.0.1:8443/callback"}}},
//			},
//		}
//		os.Exit(harness.Main(m, opts, func(e *harness.Env) { env = e }))
//	}
//
//	func TestSomething(t *testing.T) {
//		env.LogOnFailure(t) // component log tails when the test fails
//		client := env.APIServer.Client()
//		...
//	}
//
// A test that needs its own components calls harness.New(t, opts), which
// stops them in t.Cleanup. Single components start with StartEtcd,
// StartAPIServer, StartControllerManager, StartDex and StartKWOK.
//
// What the environment offers:
//
//   - env.APIServer: URL, CAPEM, AdminToken, Kubeconfig (admin, written
//     with clientcmd), Config/ConfigFor(token) for client-go, Client,
//     WriteKubeconfig for any token. Static token identities are fixed at
//     start by APIServerOptions.Identities. RBAC is on.
//   - env.ControllerManager: aggregates the built-in view/edit/admin
//     ClusterRoles, deletes namespaces, creates default service accounts,
//     publishes kube-root-ca.crt, collects garbage.
//   - env.Dex: Issuer, CAPEM, HTTPClient, IDToken (password grant,
//     scopes openid email profile groups), PasswordToken, Endpoint,
//     Browser (plays the user's browser through Dex's login form up to a
//     redirect URI) and Restart (same issuer, port and TLS; e.g. new
//     groups for a user; signing keys are regenerated).
//   - env.StartKWOK / Options.KWOK: a fake node, 127.0.0.1, whose kubelet
//     API is KWOK: CreatePod, SetExec (commands run on this host),
//     SetLogs (CRI log files, see WriteCRILog), SetPortForward, Restart.
//     KWOK sees these rules through a watch, so retry the first request
//     (harness.Eventually).
//   - harness.Kubectl runs the installed kubectl with a kubeconfig,
//     context, environment and timeout; harness.Helm runs helm the same
//     way, with its configuration in a directory of the test's.
//   - harness.StartK9s runs k9s in the pane of a tmux server of its own:
//     WaitScreen/WaitContains poll capture-pane, Keys types; the test's
//     cleanup stops both. TestUser.Helm and TestUser.StartK9s point them
//     at the mesh context.
//   - harness.StartProcess runs any other program (e.g. the clustral
//     binary) the same way the components run: own process group,
//     SIGKILL when the test binary dies, output in a log file.
//
// Every process is stopped with SIGTERM, then SIGKILL of its process
// group, when the test or package ends, and dies with the test binary if
// it crashes.
//
// # Tools
//
// The programs under cmd/ are run by the Makefile and live in this
// module to keep their dependencies out of the root module: cmd/bench
// (make bench), cmd/demo (make demo), cmd/image (make image: the OCI
// image, with go-containerregistry) and cmd/release (make release: the
// archives, completions, man pages and SHA256SUMS). The tests of
// cmd/image and cmd/release run those make targets.
package integration
