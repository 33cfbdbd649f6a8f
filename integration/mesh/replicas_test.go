package mesh

// Several coordinator replicas serving one mesh from one etcd: real
// coordinator processes on a three-member etcd cluster, agents and
// `clustral up` attached to different replicas.

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/node"
	"github.com/clustral/clustral/pkg/coordclient"
	"github.com/clustral/clustral/proto"
)

// newReplicaMesh starts three replicas with extraArgs, logs the admin
// in at the first, and creates the cluster and the suite's role there.
func newReplicaMesh(t *testing.T, extraArgs ...string) (*harness.Replicas, *harness.TestUser, proto.CreateClusterResponse) {
	t.Helper()
	r := suite.StartReplicas(t, 3, extraArgs...)
	a := suite.NewUser(t, admin)
	a.MustLogin()
	var cl proto.CreateClusterResponse
	a.MustAPI("POST", "/api/v1/clusters", proto.CreateClusterRequest{Name: harness.MeshCluster}, &cl)
	for _, ro := range []proto.Role{harness.ViewerRole, harness.EditorRole} {
		a.MustAPI("POST", "/api/v1/roles", ro, nil)
	}
	return r, a, cl
}

// openWatch waits until c reaches the cluster through the mesh and
// returns a watch of configmaps in a new namespace, open end to end.
func openWatch(t *testing.T, c *harness.TestUser) (ns string, w *harness.BackgroundKubectl) {
	t.Helper()
	ns = suite.NewNamespace(t)
	harness.MustEventually(t, 10*time.Second, func(ctx context.Context) error {
		_, err := c.RunKubectl("get", "configmaps", "-n", ns)
		return err
	})
	w = c.StartKubectl(t, nil, nil, "get", "configmaps", "-n", ns, "-w", "--output-watch-events")
	suite.CreateConfigMap(t, ns, "opened")
	w.WaitContains(10*time.Second, "opened")
	return ns, w
}

// watchEndsAfter runs revoke and fails t unless the watch w ends within
// 1 s at the agent plus kubectl's own retry (as TestRoleRemovedWhileUp
// in integration/mesh allows), logging how long it took after where.
func watchEndsAfter(t *testing.T, w *harness.BackgroundKubectl, where string, revoke func()) {
	t.Helper()
	start := time.Now()
	revoke()
	err := w.WaitExit(10 * time.Second)
	took := time.Since(start)
	t.Logf("watch ended %v after the revocation %s: %v", took, where, err)
	if took > 3*time.Second {
		t.Errorf("watch ended %v after the revocation %s, want within 1s (and one retry by kubectl)", took, where)
	}
}

// carolWatchingAcrossReplicas starts three replicas with the agent on B
// and carol's device on C, assigns carol the viewer role on A, and
// returns the administrator (on A), the assignment and carol's open
// watch.
func carolWatchingAcrossReplicas(t *testing.T) (*harness.TestUser, proto.Assignment, *harness.BackgroundKubectl) {
	t.Helper()
	r, adm, cl := newReplicaMesh(t)
	urls := r.URLs()
	suite.StartAgentAt(t, urls[1], cl.JoinToken)
	c := suite.NewUser(t, carol)
	c.MustLoginAt(urls[2])
	var asg proto.Assignment
	adm.MustAPI("POST", "/api/v1/assignments", proto.Assignment{User: carol.Email, Role: "viewer", Cluster: harness.MeshCluster}, &asg)
	c.MustUp()
	_, w := openWatch(t, c)
	return adm, asg, w
}

// TestRevocationAcrossReplicas: the agent streams from replica B, carol's
// device from replica C, and the administrator works on replica A. An
// assignment made on A opens the cluster to carol; its deletion on A
// ends her open watch within a second, as on one coordinator.
func TestRevocationAcrossReplicas(t *testing.T) {
	adm, asg, w := carolWatchingAcrossReplicas(t)
	watchEndsAfter(t, w, "on A (device on C, agent on B)", func() {
		adm.MustAPI("DELETE", "/api/v1/assignments/"+asg.ID, nil, nil)
	})
}

// TestEndLiveSessionAcrossReplicas: the agent streams from and reports
// to replica B, carol's device streams from C, and the administrator
// works on A: A lists carol's open watch, and ending it there cuts it
// within a second, through the store to B and B's map stream to the
// agent.
func TestEndLiveSessionAcrossReplicas(t *testing.T) {
	adm, _, w := carolWatchingAcrossReplicas(t)
	var watch proto.LiveStream
	harness.MustEventually(t, 10*time.Second, func(context.Context) error {
		var ls proto.LiveSessions
		adm.MustAPI("GET", proto.LiveSessionsPath, nil, &ls)
		for _, s := range ls.Streams {
			if s.User == carol.Email && s.Kind == proto.LiveWatch {
				watch = s
				return nil
			}
		}
		return fmt.Errorf("replica A lists no watch of carol: %+v", ls.Streams)
	})
	start := time.Now()
	var ended proto.EndLiveSession
	adm.MustAPI("POST", proto.LiveSessionsPath+"/"+watch.ID+"/end", nil, &ended)
	w.WaitExit(10 * time.Second)
	took := time.Since(start)
	t.Logf("carol's watch ended %v after the end on A (agent on B, sent at once: %v)", took.Round(time.Millisecond), ended.Sent)
	if took > time.Second {
		t.Errorf("carol's watch ended %v after the end on A, want within 1s", took)
	}
}

// TestJoinTokenRevokedDuringRegistrations: agents register with the
// cluster's join token on replicas B and C while the administrator
// revokes the token on A. Whichever order the store put them in, no
// agent outlives the revocation: each registration either was refused
// or landed before the revocation, which then removed it; and every
// replica agrees.
func TestJoinTokenRevokedDuringRegistrations(t *testing.T) {
	r, adm, cl := newReplicaMesh(t)
	urls := r.URLs()
	ctx := t.Context()
	var (
		wg                  sync.WaitGroup
		mu                  sync.Mutex
		registered, refused int
		other               []error
	)
	stop := make(chan struct{})
	for i := range 6 {
		url := urls[1+i%2]
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				var key proto.Key
				rand.Read(key[:])
				_, err := harness.RegisterAgent(ctx, http.DefaultClient, url, cl.JoinToken, key, "race")
				mu.Lock()
				switch {
				case err == nil:
					registered++
				case coordclient.IsRefused(err):
					refused++
				default:
					other = append(other, err)
				}
				mu.Unlock()
				if err != nil && coordclient.IsRefused(err) {
					return
				}
			}
		})
	}
	// Let some registrations land first.
	harness.MustEventually(t, 10*time.Second, func(context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		if registered < 6 {
			return fmt.Errorf("%d agents registered so far", registered)
		}
		return nil
	})
	adm.MustAPI("POST", "/api/v1/clusters/"+harness.MeshCluster+"/revoke-token", nil, nil)
	harness.MustEventually(t, 10*time.Second, func(context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		if refused < 6 {
			return fmt.Errorf("%d of 6 registering loops refused so far", refused)
		}
		return nil
	})
	close(stop)
	wg.Wait()
	if err := errors.Join(other...); err != nil {
		t.Fatalf("registrations failed other than by refusal: %v", err)
	}
	t.Logf("%d agents registered before the revocation, %d loops refused after it", registered, refused)
	for i, url := range urls {
		var last error
		err := harness.Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
			var c proto.Cluster
			actx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			if err := adm.API(actx, url, "GET", "/api/v1/clusters/"+harness.MeshCluster, nil, &c); err != nil {
				return err
			}
			if len(c.Agents) != 0 {
				last = fmt.Errorf("replica %d still lists %d agents after the join token was revoked: %v", i, len(c.Agents), c.Agents)
				return last
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%v (last: %v)", err, last)
		}
	}
}

// connectedDevices returns how many devices hold a map stream on the
// replica at url, from its metrics.
func connectedDevices(url string) (int, error) {
	m, err := harness.HTTPGet(url + "/metrics")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(m, "\n") {
		if rest, ok := strings.CutPrefix(l, `clustral_coordinator_connected_nodes{kind="device"} `); ok {
			var n int
			_, err := fmt.Sscan(rest, &n)
			return n, err
		}
	}
	return 0, fmt.Errorf("no connected_nodes series in %s/metrics", url)
}

// simDevices is how many in-process devices TestReplicaKilled adds to
// carol's real one.
const simDevices = 99

// streamSimDevices registers n devices of the user whose session is
// given at the replica urls[0] and holds a map stream for each with the
// devices' own client (node.Stream, its back-off included), given every
// replica's URL, first urls[0]. It returns once each has its snapshot;
// t's cleanup stops them.
func streamSimDevices(t *testing.T, urls []string, session string, n int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	reg := coordclient.New(urls[0], session, nil)
	streams := make([]*node.Stream, n)
	for i := range streams {
		var k proto.Key
		rand.Read(k[:]) // any 32 bytes are a Curve25519 public key
		resp, err := reg.RegisterDevice(ctx, proto.RegisterDeviceRequest{PublicKey: k, Hostname: fmt.Sprintf("sim-%d", i)})
		if err != nil {
			t.Fatalf("register simulated device %d: %v", i, err)
		}
		st, err := node.NewStream(discard{}, node.StreamConfig{BaseURL: strings.Join(urls, ","), Token: resp.NodeToken,
			Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		streams[i] = st
		wg.Go(func() { st.Run(ctx) })
	}
	harness.MustEventually(t, 10*time.Second, func(context.Context) error {
		for i, st := range streams {
			if !st.Status().Connected {
				return fmt.Errorf("simulated device %d has no snapshot yet", i)
			}
		}
		return nil
	})
}

// discard is a node.Applier that keeps nothing.
type discard struct{}

func (discard) Apply(proto.MapMessage) error { return nil }

// TestReplicaKilled: carol's real device and 99 simulated ones (the
// devices' map stream client in this process) know all three replicas
// and stream from the first; the agent streams from the second. The
// first is killed (SIGKILL): the watch carol has open goes on (the data
// path does not touch the coordinator), all 100 devices are back on a
// map stream at another replica within 5 s, kubectl works, and a
// revocation made on a surviving replica still ends her watch.
func TestReplicaKilled(t *testing.T) {
	r, adm, cl := newReplicaMesh(t, fmt.Sprintf("--max-devices-per-user=%d", simDevices+1))
	urls := r.URLs()
	suite.StartAgentAt(t, urls[1]+","+urls[2], cl.JoinToken)
	c := suite.NewUser(t, carol)
	c.MustLoginAt(strings.Join(urls, ","))
	var asg proto.Assignment
	adm.MustAPI("POST", "/api/v1/assignments", proto.Assignment{User: carol.Email, Role: "viewer", Cluster: harness.MeshCluster}, &asg)
	c.MustUp()
	session, err := c.SessionToken()
	if err != nil {
		t.Fatal(err)
	}
	streamSimDevices(t, urls, session, simDevices)
	ns, w := openWatch(t, c)
	if n, err := connectedDevices(urls[0]); err != nil || n != simDevices+1 {
		t.Fatalf("devices streaming from the first replica: %d, %v; want %d", n, err, simDevices+1)
	}

	r.Coords[0].Proc.Kill()
	killed := time.Now()
	harness.MustEventually(t, 5*time.Second, func(context.Context) error {
		total := 0
		for _, u := range urls[1:] {
			n, err := connectedDevices(u)
			if err != nil {
				return err
			}
			total += n
		}
		if total != simDevices+1 {
			return fmt.Errorf("%d devices on the surviving replicas, want %d", total, simDevices+1)
		}
		return nil
	})
	t.Logf("%d devices stream from other replicas %v after the kill", simDevices+1, time.Since(killed).Round(10*time.Millisecond))
	suite.CreateConfigMap(t, ns, "after-kill")
	w.WaitContains(10*time.Second, "after-kill")
	if _, err := c.RunKubectl("get", "configmaps", "-n", ns); err != nil {
		t.Fatalf("kubectl after the kill: %v", err)
	}

	watchEndsAfter(t, w, "on a surviving replica", func() {
		if err := adm.API(t.Context(), urls[1], "DELETE", "/api/v1/assignments/"+asg.ID, nil, nil); err != nil {
			t.Fatal(err)
		}
	})
}

// TestLoginAcrossReplicas: `clustral login` starts at replica B, Dex
// sends the browser back to the public URL, replica A, and the CLI
// redeems its one-time code at B: a login started on one replica
// completes through another.
func TestLoginAcrossReplicas(t *testing.T) {
	r := suite.StartReplicas(t, 3)
	urls := r.URLs()
	u := suite.NewUser(t, carol)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	l := harness.StartCLILogin(t, ctx, u, urls[1], harness.Desktop(t))
	resp, err := suite.Env.Dex.Browser().LoginFollow(ctx, l.AuthURL, carol.Email, carol.Password)
	if err != nil {
		t.Fatal(err)
	}
	page := harness.ReadPage(t, resp)
	if resp.StatusCode != 200 || !strings.Contains(page, "Signed in as "+carol.Email) {
		t.Fatalf("the browser ended at %s: %d %s", resp.Request.URL, resp.StatusCode, page)
	}
	l.Wait(t, "Logged in to "+urls[1]+" as "+carol.Email)
	out := u.MustRun("status", "-o", "json")
	if !strings.Contains(out, `"user": "carol@example.com"`) || !strings.Contains(out, `"replica": "`) {
		t.Fatalf("status after login = %s, want carol and the replica in use", out)
	}
}

// etcdLeader returns the index of the etcd cluster's leader.
func etcdLeader(t *testing.T, urls []string) int {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: urls, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	for i, u := range urls {
		st, err := cli.Status(t.Context(), u)
		if err != nil {
			t.Fatal(err)
		}
		if st.Leader == st.Header.MemberId {
			return i
		}
	}
	t.Fatal("the etcd cluster has no leader")
	return -1
}

// TestReplicasSurviveEtcdLeaderLoss: roles are created through all three
// replicas while the etcd leader is killed (SIGKILL). Every role whose
// creation was acknowledged is there afterwards, and every replica's view
// ends the same as the store's.
func TestReplicasSurviveEtcdLeaderLoss(t *testing.T) {
	r, adm, _ := newReplicaMesh(t)
	urls := r.URLs()
	const writes = 60
	var acked []string
	for i := range writes {
		if i == writes/3 {
			r.Etcd.Kill(etcdLeader(t, r.Etcd.URLs))
		}
		name := fmt.Sprintf("load-%03d", i)
		err := adm.API(t.Context(), urls[i%len(urls)], "POST", "/api/v1/roles", proto.Role{Name: name, Groups: []string{"g"}}, nil)
		if err == nil {
			acked = append(acked, name)
		}
	}
	if len(acked) < writes/2 {
		t.Fatalf("only %d of %d writes acknowledged with two of three etcd members up", len(acked), writes)
	}
	views := make([]string, len(urls))
	harness.MustEventually(t, 15*time.Second, func(ctx context.Context) error {
		for i, u := range urls {
			var roles []proto.Role
			if err := adm.API(ctx, u, "GET", "/api/v1/roles", nil, &roles); err != nil {
				return err
			}
			names := make([]string, len(roles))
			for j, ro := range roles {
				names[j] = ro.Name
			}
			views[i] = strings.Join(names, ",")
			for _, a := range acked {
				if !slices.Contains(names, a) {
					return fmt.Errorf("replica %d lacks the acknowledged role %s", i, a)
				}
			}
		}
		if views[0] != views[1] || views[0] != views[2] {
			return fmt.Errorf("replicas differ:\n%s", strings.Join(views, "\n"))
		}
		return nil
	})
	t.Logf("%d of %d role creations acknowledged across the leader's loss; all three replicas list the same %d roles", len(acked), writes, strings.Count(views[0], ",")+1)
}

// relayStats reads a replica's relay counters.
func relayStats(ctx context.Context, url string) (proto.RelayStats, error) {
	var st proto.RelayStats
	req, err := http.NewRequestWithContext(ctx, "GET", url+proto.RelayPath+"/stats", nil)
	if err != nil {
		return st, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("relay stats of %s: %s", url, resp.Status)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// TestRelayAcrossReplicas: with --relay-only no pair has a direct path;
// the agent's relay connection is on replica B and carol's device's on
// replica C, so kubectl through the mesh works only if B and C forward
// each other's datagrams over their replica link.
func TestRelayAcrossReplicas(t *testing.T) {
	r, adm, cl := newReplicaMesh(t, "--relay-only")
	urls := r.URLs()
	suite.StartAgentAt(t, urls[1], cl.JoinToken)
	c := suite.NewUser(t, carol)
	c.MustLoginAt(urls[2])
	adm.MustAPI("POST", "/api/v1/assignments", proto.Assignment{User: carol.Email, Role: "viewer", Cluster: harness.MeshCluster}, nil)
	c.MustUp()
	ns, w := openWatch(t, c)
	suite.CreateConfigMap(t, ns, "through-two-replicas")
	w.WaitContains(10*time.Second, "through-two-replicas")

	var b, cs proto.RelayStats
	harness.MustEventually(t, 5*time.Second, func(ctx context.Context) error {
		var err error
		if b, err = relayStats(ctx, urls[1]); err != nil {
			return err
		}
		if cs, err = relayStats(ctx, urls[2]); err != nil {
			return err
		}
		if b.ForwardedOut == 0 || b.ForwardedIn == 0 || cs.ForwardedOut == 0 || cs.ForwardedIn == 0 {
			return fmt.Errorf("replica B %+v, replica C %+v: want datagrams forwarded both ways", b, cs)
		}
		return nil
	})
	t.Logf("replica B %+v; replica C %+v", b, cs)
	if a, err := relayStats(t.Context(), urls[0]); err != nil || a.ForwardedIn != 0 || a.ForwardedOut != 0 {
		t.Errorf("replica A, which holds neither end, forwarded: %+v, %v", a, err)
	}
}

// TestAgentGoneAcrossReplicas: the agent streams from replica B and
// carol's device from replica C. Replica A, which holds neither, shows the
// agent online; killed, the agent leaves carol's map (C removes it
// AgentGrace after B saw its stream close), and every replica shows it
// offline.
func TestAgentGoneAcrossReplicas(t *testing.T) {
	r, adm, cl := newReplicaMesh(t)
	urls := r.URLs()
	agent := suite.StartAgentAt(t, urls[1], cl.JoinToken)
	c := suite.NewUser(t, carol)
	c.MustLoginAt(urls[2])
	adm.MustAPI("POST", "/api/v1/assignments", proto.Assignment{User: carol.Email, Role: "viewer", Cluster: harness.MeshCluster}, nil)
	c.MustUp()
	harness.MustEventually(t, 10*time.Second, func(context.Context) error {
		_, err := c.RunKubectl("get", "configmaps", "-n", "default")
		return err
	})
	agentsInMap := func() (int, error) {
		var st struct {
			Agents []struct {
				Cluster string `json:"cluster"`
			} `json:"agents"`
		}
		if err := json.Unmarshal([]byte(c.MustRun("status", "-o", "json")), &st); err != nil {
			return 0, err
		}
		n := 0
		for _, a := range st.Agents {
			if a.Cluster == harness.MeshCluster {
				n++
			}
		}
		return n, nil
	}
	onlineAt := func(ctx context.Context, url string) (bool, error) {
		var cls []proto.Cluster
		if err := adm.API(ctx, url, "GET", "/api/v1/clusters", nil, &cls); err != nil {
			return false, err
		}
		for _, c := range cls {
			if c.Name == harness.MeshCluster && len(c.Agents) == 1 {
				return c.Agents[0].Online, nil
			}
		}
		return false, fmt.Errorf("cluster %s with one agent not found", harness.MeshCluster)
	}
	if n, err := agentsInMap(); err != nil || n != 1 {
		t.Fatalf("agents of %s in carol's map: %d, %v; want 1", harness.MeshCluster, n, err)
	}
	harness.MustEventually(t, 5*time.Second, func(ctx context.Context) error {
		for _, u := range urls {
			if on, err := onlineAt(ctx, u); err != nil || !on {
				return fmt.Errorf("%s: agent online %v, %v", u, on, err)
			}
		}
		return nil
	})

	agent.Proc.Kill()
	killed := time.Now()
	harness.MustEventually(t, 15*time.Second, func(context.Context) error {
		if n, err := agentsInMap(); err != nil || n != 0 {
			return fmt.Errorf("%d agents in carol's map (%v)", n, err)
		}
		return nil
	})
	t.Logf("the killed agent left the map of a device on another replica %v later", time.Since(killed).Round(100*time.Millisecond))
	for _, u := range urls {
		if on, err := onlineAt(t.Context(), u); err != nil || on {
			t.Errorf("%s: the killed agent is online: %v, %v", u, on, err)
		}
	}
}
