package mesh

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/integration/harness"
	"github.com/clustral/clustral/proto"
)

// TestRecordExec: bob's role requires recording. kubectl exec -it, typed
// on a terminal, over websocket and over SPDY: each session's recording
// reaches the coordinator and replays the typed commands' output in
// order, without stdin (the role does not ask for it); audit verify
// checks both, and names the one whose stored copy had a byte edited.
// With the agent's recording directory gone, an exec is refused with a
// sentence.
func TestRecordExec(t *testing.T) {
	ctx := context.Background()
	recDir := filepath.Join(t.TempDir(), "recordings")
	r := newRecordedPod(t, "--recording-dir", recDir)
	m, b, ns, pod := r.mesh, r.bob, r.ns, r.pod
	before := recordingsOf(t, m, pod)

	modes := []struct {
		name, protocol string
		ws             bool
	}{{"websocket", "websocket", true}, {"spdy", "SPDY/3.1", false}}
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			env := []string{"KUBECTL_REMOTE_COMMAND_WEBSOCKETS=" + strconv.FormatBool(mode.ws)}
			p := b.StartKubectlPane(t, env, "exec", "-it", "-n", ns, pod, "-c", "c", "--", "sh")
			// The output differs from what is typed, so the screen shows
			// that the pod answered.
			p.Keys("echo $((6*7))-"+mode.name, "Enter")
			p.WaitContains(20*time.Second, "42-"+mode.name)
			p.Keys("echo $((7*8))-"+mode.name, "Enter")
			p.WaitContains(10*time.Second, "56-"+mode.name)
			p.Keys("exit", "Enter")
			p.WaitExited(10 * time.Second)
		})
	}

	// Both recordings reach the coordinator once their sessions end.
	var recs []proto.RecordingInfo
	harness.MustEventually(t, 20*time.Second, func(context.Context) error {
		recs = recordingsOf(t, m, pod)
		if len(recs) < len(before)+2 {
			return fmt.Errorf("%d recordings of pod %s at the coordinator, want %d", len(recs), pod, len(before)+2)
		}
		return nil
	})
	byProtocol := map[string]proto.RecordingInfo{}
	for _, r := range recs[:2] { // newest first
		byProtocol[r.Session.Protocol] = r
	}
	for _, mode := range modes {
		var r proto.RecordingInfo
		for protocol, ri := range byProtocol {
			if strings.Contains(protocol, "("+mode.protocol+")") {
				r = ri
			}
		}
		if r.Session.ID == "" {
			t.Fatalf("no recording over %s among %+v", mode.protocol, byProtocol)
		}
		if r.Session.User != bob.Email || r.Session.Namespace != ns || r.Session.Container != "c" || !r.Session.TTY ||
			strings.Join(r.Session.Command, " ") != "sh" || r.Session.Stdin {
			t.Errorf("%s: session %+v", mode.name, r.Session)
		}
		out := m.Admin.MustRun("sessions", "export", r.Session.ID)
		output, codes := replayOutput(t, out)
		i42, i56 := strings.Index(output, "42-"+mode.name), strings.Index(output, "56-"+mode.name)
		if i42 < 0 || i56 < i42 {
			t.Errorf("%s: the recording's output does not hold 42-… then 56-…:\n%q", mode.name, output)
		}
		if codes["i"] != 0 {
			t.Errorf("%s: stdin recorded (%d events), though the role does not ask for it", mode.name, codes["i"])
		}
		if codes["r"] == 0 {
			t.Errorf("%s: no terminal size recorded", mode.name)
		}
	}
	out := m.Admin.MustRun("audit", "verify")
	if !strings.Contains(out, "Session recordings intact") {
		t.Errorf("audit verify:\n%s", out)
	}

	// The role asks for stdin: once the agent has the change, what bob
	// sends is recorded too.
	m.Admin.MustAPI("PUT", "/api/v1/roles/recorded", proto.Role{Groups: []string{"clustral:editors"}, Recording: proto.RecordingRequired, RecordStdin: true}, nil)
	harness.MustEventually(t, 30*time.Second, func(context.Context) error {
		k := b.Kubectl()
		k.Context, k.Stdin = harness.MeshContext, strings.NewReader("typed by bob\n")
		if _, err := k.Run(ctx, "exec", "-i", "-n", ns, pod, "-c", "c", "--", "head", "-n", "1"); err != nil {
			return err
		}
		var newest []proto.RecordingInfo
		harness.MustEventually(t, 20*time.Second, func(context.Context) error {
			if newest = recordingsOf(t, m, pod); len(newest) == len(recs) {
				return fmt.Errorf("the stdin session's recording is not at the coordinator yet")
			}
			return nil
		})
		recs = newest
		cast := m.Admin.MustRun("sessions", "export", newest[0].Session.ID)
		if _, codes := replayOutput(t, cast); codes["i"] == 0 || !strings.Contains(cast, `"i", "typed by bob\n"]`) {
			return fmt.Errorf("no stdin in the newest recording:\n%s", cast)
		}
		return nil
	})

	// One byte of a stored recording edited: verify names the session,
	// once its end event (which carries the digest) has reached the
	// coordinator: the agent ships events in batches, so the recording
	// may be stored first.
	edited := recs[0].Session.ID
	harness.MustEventually(t, 30*time.Second, func(context.Context) error {
		if out := m.Admin.MustRun("audit", "--code", string(proto.AuditStreamEnded), "--search", edited, "-o", "json"); !strings.Contains(out, edited) {
			return fmt.Errorf("no RQ004I for %s yet", edited)
		}
		return nil
	})
	if err := m.Coord.EditRecording(ctx, edited, func(b []byte) { b[len(b)/2] ^= 0x01 }); err != nil {
		t.Fatal(err)
	}
	if stdout, stderr, code := m.Admin.RunCode("audit", "verify"); code == 0 || !strings.Contains(stdout+stderr, "Session recording "+edited+" EDITED") {
		t.Errorf("audit verify after an edit: exit %d\n%s%s", code, stdout, stderr)
	}

	// The agent cannot write recordings: the required exec is refused.
	if err := os.RemoveAll(recDir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(recDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, mode := range modes {
		res, err := b.RunKubectlEnv([]string{"KUBECTL_REMOTE_COMMAND_WEBSOCKETS=" + strconv.FormatBool(mode.ws)}, "exec", "-n", ns, pod, "-c", "c", "--", "echo", "not recorded")
		if err == nil || !strings.Contains(res.Stderr, "requires that this exec session be recorded, and the agent cannot record it") {
			t.Errorf("%s: exec with no recording directory: %v\nstdout %q\nstderr %q", mode.name, err, res.Stdout, res.Stderr)
		}
	}
}

// recordedPod is a mesh whose agent runs with the given arguments, bob
// up with the role "recorded" (editors, recording required), and a pod
// on KWOK's node whose exec works.
type recordedPod struct {
	mesh    *harness.Mesh
	agent   *harness.Agent
	bob     *harness.TestUser
	ns, pod string
}

func newRecordedPod(t *testing.T, agentArgs ...string) recordedPod {
	t.Helper()
	kw := suite.KWOK(t)
	ctx := context.Background()
	r := recordedPod{mesh: suite.NewMesh(t), pod: "app"}
	r.agent = suite.StartAgent(t, r.mesh.JoinToken, agentArgs...)
	r.mesh.Admin.MustAPI("POST", "/api/v1/roles", proto.Role{Name: "recorded", Groups: []string{"clustral:editors"}, Recording: proto.RecordingRequired}, nil)
	r.bob = suite.NewUser(t, bob)
	r.bob.MustLogin()
	r.mesh.Assign(t, bob.Email, "recorded")
	r.bob.MustUp()
	r.ns = suite.NewNamespace(t)
	if err := kw.SetExec(ctx, r.ns, r.pod, "", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := kw.CreatePod(ctx, harness.FakePod(r.ns, r.pod, "c")); err != nil {
		t.Fatal(err)
	}
	harness.MustEventually(t, 20*time.Second, func(context.Context) error {
		_, err := r.bob.RunKubectl("exec", "-n", r.ns, r.pod, "-c", "c", "--", "true")
		return err
	})
	return r
}

// recordingsOf lists the coordinator's recordings of pod, newest first.
func recordingsOf(t *testing.T, m *harness.Mesh, pod string) []proto.RecordingInfo {
	t.Helper()
	out := m.Admin.MustRun("sessions", "ls", "--pod", pod, "-o", "json")
	var recs []proto.RecordingInfo
	if err := json.Unmarshal([]byte(out), &recs); err != nil {
		t.Fatalf("sessions ls -o json: %v\n%s", err, out)
	}
	return recs
}

// replayOutput joins the output events of an asciicast recording and
// counts its events by code.
func replayOutput(t *testing.T, cast string) (string, map[string]int) {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(cast))
	sc.Buffer(nil, 1<<20)
	if !sc.Scan() {
		t.Fatal("empty recording")
	}
	var out strings.Builder
	codes := map[string]int{}
	last := 0.0
	for sc.Scan() {
		var ev []any
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil || len(ev) != 3 {
			t.Fatalf("recording line %q: %v", sc.Text(), err)
		}
		at, _ := ev[0].(float64)
		if at < last {
			t.Errorf("event %q is earlier than the one before", sc.Text())
		}
		last = at
		code, _ := ev[1].(string)
		codes[code]++
		if code == "o" {
			out.WriteString(ev[2].(string))
		}
	}
	return out.String(), codes
}

// TestRecordingSurvivesOutageAndAgentKill: a recorded session goes on
// while the coordinator is down; then the agent is killed with SIGKILL.
// Once both are back (the agent on the same directories), the recording
// reaches the coordinator with every byte the pod had sent before the
// kill, from before and during the outage.
func TestRecordingSurvivesOutageAndAgentKill(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	agentArgs := []string{"--audit-dir", filepath.Join(dir, "audit"), "--recording-dir", filepath.Join(dir, "recordings")}
	r := newRecordedPod(t, agentArgs...)
	m, b, ns, pod, first := r.mesh, r.bob, r.ns, r.pod, r.agent
	before := len(recordingsOf(t, m, pod))

	p := b.StartKubectlPane(t, nil, "exec", "-it", "-n", ns, pod, "-c", "c", "--", "sh")
	p.Keys("echo $((6*7))-before-the-outage", "Enter")
	p.WaitContains(20*time.Second, "42-before-the-outage")
	m.Coord.Proc.Kill()
	p.Keys("echo $((7*8))-during-the-outage", "Enter")
	p.WaitContains(10*time.Second, "56-during-the-outage")
	first.Proc.Kill()
	// kubectl would wait for its TCP connection to time out: the agent
	// that held its other end is gone without a word.
	p.Stop()

	if err := m.Coord.Start(ctx); err != nil {
		t.Fatal(err)
	}
	suite.StartAgent(t, m.JoinToken, agentArgs...)
	var recs []proto.RecordingInfo
	harness.MustEventually(t, 30*time.Second, func(context.Context) error {
		if recs = recordingsOf(t, m, pod); len(recs) <= before {
			return fmt.Errorf("the killed session's recording is not at the coordinator yet")
		}
		return nil
	})
	id := recs[0].Session.ID
	output, _ := replayOutput(t, m.Admin.MustRun("sessions", "export", id))
	i42, i56 := strings.Index(output, "42-before-the-outage"), strings.Index(output, "56-during-the-outage")
	if i42 < 0 || i56 < i42 {
		t.Errorf("the recording lost what the pod sent before the kill:\n%q", output)
	}
	// The new agent vouches for it (RQ005W), so verify checks it.
	harness.MustEventually(t, 30*time.Second, func(context.Context) error {
		if out := m.Admin.MustRun("audit", "--code", string(proto.AuditRecordingRescued), "--search", id, "-o", "json"); !strings.Contains(out, id) {
			return fmt.Errorf("no RQ005W for %s yet", id)
		}
		return nil
	})
	if out := m.Admin.MustRun("audit", "verify"); !strings.Contains(out, "Session recordings intact") {
		t.Errorf("audit verify:\n%s", out)
	}
}

// TestRecordingWatchedLive: while bob's recorded kubectl exec -it runs,
// the admin follows it with `clustral sessions play --follow`, named by
// the recording id its start event (RQ003I) carries: what bob's commands
// print shows up in the admin's terminal while the session still runs,
// and the follow ends when the session does. The stored recording is
// then the whole session, vouched for by its end event.
func TestRecordingWatchedLive(t *testing.T) {
	r := newRecordedPod(t)
	m, b, ns, pod := r.mesh, r.bob, r.ns, r.pod
	// The recordings bob's earlier execs left in ns (newRecordedPod waits
	// for exec with one), which the live session's id must not be taken
	// for however late their events arrive.
	startedIDs := func() []string {
		out := m.Admin.MustRun("audit", "--code", string(proto.AuditStreamStarted), "--search", pod, "-o", "json")
		var ids []string
		dec := json.NewDecoder(strings.NewReader(out))
		for {
			var e proto.AuditEvent
			if dec.Decode(&e) != nil {
				break
			}
			if e.Actor == bob.Email && e.Metadata[proto.MetaRecording] != "" && e.Resource != nil && e.Resource.Namespace == ns {
				ids = append(ids, e.Metadata[proto.MetaRecording])
			}
		}
		return ids
	}
	var earlier []string
	harness.MustEventually(t, 30*time.Second, func(context.Context) error {
		if earlier = startedIDs(); len(earlier) == 0 {
			return fmt.Errorf("no RQ003I of the exec that waited for the pod yet")
		}
		return nil
	})

	p := b.StartKubectlPane(t, nil, "exec", "-it", "-n", ns, pod, "-c", "c", "--", "sh")
	p.Keys("echo $((6*7))-live", "Enter")
	p.WaitContains(20*time.Second, "42-live")
	var id string
	harness.MustEventually(t, 30*time.Second, func(context.Context) error {
		for _, s := range startedIDs() {
			if !slices.Contains(earlier, s) {
				id = s
			}
		}
		if id == "" {
			return fmt.Errorf("no RQ003I naming the live session's recording yet")
		}
		return nil
	})
	watch := harness.StartPane(t, harness.PaneOptions{Name: "watch", Program: m.Admin.Bin,
		Args: []string{"sessions", "play", "--follow", id}, Env: m.Admin.Environ(), Width: 120, Height: 40})
	watch.WaitContains(20*time.Second, "42-live")
	p.Keys("echo $((7*8))-live", "Enter")
	p.WaitContains(10*time.Second, "56-live")
	watch.WaitContains(20*time.Second, "56-live")
	if exited, _ := watch.Exited(); exited {
		t.Fatalf("the follow ended while the session runs:\n%s", watch.Screen())
	}
	p.Keys("exit", "Enter")
	p.WaitExited(10 * time.Second)
	watch.WaitExited(30 * time.Second)

	output, _ := replayOutput(t, m.Admin.MustRun("sessions", "export", id))
	if i42, i56 := strings.Index(output, "42-live"), strings.Index(output, "56-live"); i42 < 0 || i56 < i42 {
		t.Errorf("the stored recording does not hold the whole session:\n%q", output)
	}
	harness.MustEventually(t, 30*time.Second, func(context.Context) error {
		if out := m.Admin.MustRun("audit", "--code", string(proto.AuditStreamEnded), "--search", id, "-o", "json"); !strings.Contains(out, `"recording_sha256"`) {
			return fmt.Errorf("no RQ004I with the digest of %s yet", id)
		}
		return nil
	})
	if out := m.Admin.MustRun("audit", "verify"); !strings.Contains(out, "Session recordings intact") {
		t.Errorf("audit verify:\n%s", out)
	}
}
