package nat

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/proto"
)

// TestNAT builds a Topology and runs itself again inside its core
// namespace, where the mesh is started and the scenarios run in order,
// each starting from the path the one before left.
func TestNAT(t *testing.T) { runNAT(t, "TestNAT", 1) }

// TestNATReplicas is TestNAT with two coordinator replicas on etcd, the
// agent attached to one and alice's device to the other: the direct path
// is found from endpoints shared through the store, and relayed traffic
// crosses from one replica to the other.
func TestNATReplicas(t *testing.T) { runNAT(t, "TestNATReplicas", 2) }

// runNAT runs the scenarios of test with replicas coordinators.
func runNAT(t *testing.T, test string, replicas int) {
	if topo, ok := FromEnv(); ok {
		inner(t, topo, replicas)
		return
	}
	if err := Supported(); err != nil {
		t.Skip(err)
	}
	bin, err := harness.ClustralBinary(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	topo, err := NewTopology()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := topo.Close(); err != nil {
			t.Error(err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	out := harness.RunInNetns(ctx, t, topo.Core, "topology", test, topo.Environ(), "CLUSTRAL_BIN="+bin)
	if testing.Verbose() {
		t.Logf("inside the topology:\n%s", out)
	}
}

// A GET of bulkGet moves at least bulkBytes over the wire (random data,
// so gzip cannot shrink it); its JSON is larger (base64).
const (
	bulkObjects    = 8
	bulkObjectSize = 768 << 10
	bulkGet        = BulkPath
	bulkBytes      = bulkObjects * bulkObjectSize
)

func inner(t *testing.T, topo *Topology, replicas int) {
	ctx := context.Background()
	m, err := StartMeshReplicas(ctx, topo, os.Getenv("CLUSTRAL_BIN"), t.TempDir(), replicas)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(m.Logs())
		}
	})
	c := m.Env.APIServer.Client()
	if err := CreateBulk(ctx, c, bulkObjects, bulkObjectSize); err != nil {
		t.Fatal(err)
	}
	createNamespace(t, c, "watch")
	if err := m.Up(ctx); err != nil {
		t.Fatal(err)
	}

	t.Run("direct through both NATs", func(t *testing.T) {
		if !strings.Contains(kubectl(t, m, "auth", "whoami"), alice.Email) {
			t.Fatal("kubectl auth whoami through the mesh does not name alice")
		}
		if err := m.WaitPath(ctx, "direct", time.Minute); err != nil {
			t.Fatal(err)
		}
		if _, ms, err := m.Path(ctx); err != nil || ms <= 0 {
			t.Fatalf("latency_ms on the direct path = %v, %v; want a probe round trip", ms, err)
		}
		before, err := m.RelayStats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		const rounds = 3
		for range rounds {
			if n := len(kubectl(t, m, "get", "--raw", bulkGet)); n < bulkBytes {
				t.Fatalf("got %d bytes, want more than %d", n, bulkBytes)
			}
		}
		moved := rounds * bulkBytes
		after, err := m.RelayStats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// Probes may cross the relay; the transfer may not.
		if d := after.Bytes - before.Bytes; d > uint64(moved)/100 {
			t.Fatalf("the relay forwarded %d bytes (%d packets) during a direct transfer of %d bytes", d, after.Packets-before.Packets, moved)
		}
		t.Logf("direct: over %d bytes moved, relay counters +%d bytes +%d packets", moved, after.Bytes-before.Bytes, after.Packets-before.Packets)
	})

	t.Run("relay when the laptop side drops UDP", func(t *testing.T) {
		if err := topo.BlockUDP(topo.LaptopRouter); err != nil {
			t.Fatal(err)
		}
		if err := m.WaitPath(ctx, "relayed", time.Minute); err != nil {
			t.Fatal(err)
		}
		before, err := m.RelayStats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(kubectl(t, m, "auth", "whoami"), alice.Email) {
			t.Fatal("kubectl auth whoami through the relay does not name alice")
		}
		if n := len(kubectl(t, m, "get", "--raw", bulkGet)); n < bulkBytes {
			t.Fatalf("got %d bytes, want more than %d", n, bulkBytes)
		}
		moved := bulkBytes
		after, err := m.RelayStats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if d := after.Bytes - before.Bytes; d < uint64(moved) {
			t.Fatalf("the relay forwarded %d bytes during a relayed transfer of %d bytes", d, moved)
		}
		if after.Conns < 2 {
			t.Fatalf("relay connections = %d, want the device's and the agent's", after.Conns)
		}
		if crossed := after.ForwardedOut - before.ForwardedOut; replicas > 1 && crossed < uint64(moved)/proto.MaxRelayDatagram {
			t.Fatalf("%d datagrams crossed replicas during a relayed transfer of %d bytes between nodes on different replicas", crossed, moved)
		}
		t.Logf("relayed: over %d bytes moved, relay counters +%d bytes +%d packets", moved, after.Bytes-before.Bytes, after.Packets-before.Packets)
	})

	t.Run("a watch lives through path changes", func(t *testing.T) {
		// Still relayed: the previous subtest left UDP blocked.
		if err := m.WaitPath(ctx, "relayed", time.Minute); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		cmd := m.Kubectl(wctx, "get", "configmaps", "-n", "watch", "-w", "-o", "name")
		var stderr strings.Builder
		cmd.Stderr = &stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 64)
		go func() {
			s := bufio.NewScanner(stdout)
			for s.Scan() {
				lines <- s.Text()
			}
			close(lines)
		}()
		t.Cleanup(func() {
			cancel()
			cmd.Wait()
		})
		event := func(name string) {
			t.Helper()
			_, err := c.CoreV1().ConfigMaps("watch").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			timeout := time.After(30 * time.Second)
			for {
				select {
				case l, ok := <-lines:
					if !ok {
						t.Fatalf("the watch ended before %s arrived: %s", name, stderr.String())
					}
					if l == "configmap/"+name {
						return
					}
				case <-timeout:
					t.Fatalf("no event for %s within 30s", name)
				}
			}
		}
		event("relayed-1")

		if err := topo.UnblockUDP(topo.LaptopRouter); err != nil {
			t.Fatal(err)
		}
		if err := m.WaitPath(ctx, "direct", time.Minute); err != nil {
			t.Fatal(err)
		}
		event("direct-1")

		if err := topo.BlockUDP(topo.LaptopRouter); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { topo.UnblockUDP(topo.LaptopRouter) })
		if err := m.WaitPath(ctx, "relayed", time.Minute); err != nil {
			t.Fatal(err)
		}
		// The same kubectl process, on the same watch, saw all three.
		event("relayed-2")
	})

	// Every process of the mesh leaves with it (the topology's namespaces
	// are checked empty and removed by the outer test).
}

// kubectl runs kubectl through the mesh and returns its standard output.
func kubectl(t *testing.T, m *Mesh, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := m.Kubectl(ctx, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

func createNamespace(t *testing.T, c kubernetes.Interface, name string) {
	t.Helper()
	_, err := c.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(fmt.Errorf("create namespace %s: %w", name, err))
	}
}
