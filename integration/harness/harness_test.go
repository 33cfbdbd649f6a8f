package harness

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

func TestTokenFile(t *testing.T) {
	tests := []struct {
		name    string
		ids     []Identity
		want    [][]string
		wantErr bool
	}{
		{
			name: "groups quoted as one field",
			ids: []Identity{
				{Token: "t1", User: "admin", Groups: []string{"system:masters"}},
				{Token: "t2", User: "agent", UID: "u-2", Groups: []string{"a", "b"}},
				{Token: "t3", User: "nobody"},
			},
			want: [][]string{{"t1", "admin", "admin", "system:masters"}, {"t2", "agent", "u-2", "a,b"}, {"t3", "nobody", "nobody"}},
		},
		{name: "duplicate token", ids: []Identity{{Token: "t", User: "a"}, {Token: "t", User: "b"}}, wantErr: true},
		{name: "missing user", ids: []Identity{{Token: "t"}}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := tokenFile(tt.ids)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if tt.wantErr {
				return
			}
			r := csv.NewReader(bytes.NewReader(b))
			r.FieldsPerRecord = -1
			got, err := r.ReadAll()
			if err != nil {
				t.Fatal(err)
			}
			if !slices.EqualFunc(got, tt.want, slices.Equal) {
				t.Errorf("records = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestParseForms(t *testing.T) {
	const page = `<html><body>
<form method="post" action="/dex/auth/local/login?back=&amp;state=xyz">
  <input id="login" name="login" type="text" value="prefill"/>
  <input id="password" name="password" type="password"/>
  <input type="checkbox" name="remember" checked>
  <input type="checkbox" name="unchecked">
  <button type="submit">Login</button>
</form>
<form method="post"><input type="hidden" name="req" value="r1"/><input type="hidden" name="approval" value="approve"></form>
<form method="post"><input type="hidden" name="req" value="r1"/><input type="hidden" name="approval" value="rejected"></form>
</body></html>`
	forms, err := parseForms(page)
	if err != nil {
		t.Fatal(err)
	}
	if len(forms) != 3 {
		t.Fatalf("got %d forms, want 3", len(forms))
	}
	login := findForm(forms, "password")
	if login == nil || login.action != "/dex/auth/local/login?back=&state=xyz" || login.method != "post" {
		t.Fatalf("login form = %+v", login)
	}
	if got := login.values.Encode(); got != "login=prefill&password=&remember=on" {
		t.Errorf("login values = %s", got)
	}
	if f := findFormValue(forms, "approval", "approve"); f != forms[1] {
		t.Errorf("approve form = %+v", f)
	}
	if got := pageText(`<html><head><title>x</title></head><body><p>Invalid   <b>Email</b></p><script>bad()</script></body></html>`); got != "Invalid Email" {
		t.Errorf("pageText = %q", got)
	}
}

func TestKWOKStages(t *testing.T) {
	b, err := kwokStages()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, doc := range strings.Split(string(b), "---\n") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var s struct {
			Kind     string
			Metadata struct{ Name string }
			Spec     struct {
				ResourceRef struct{ APIGroup, Kind string } `json:"resourceRef"`
			}
		}
		if err := yaml.Unmarshal([]byte(doc), &s); err != nil {
			t.Fatalf("stage %q: %v", doc, err)
		}
		if s.Kind != "Stage" || s.Spec.ResourceRef.APIGroup != "v1" {
			t.Errorf("stage %s: kind %q, resourceRef %+v", s.Metadata.Name, s.Kind, s.Spec.ResourceRef)
		}
		names = append(names, s.Metadata.Name)
	}
	if want := []string{"node-initialize", "node-heartbeat", "pod-ready", "pod-delete"}; !slices.Equal(names, want) {
		t.Errorf("stages = %v, want %v", names, want)
	}
}

func TestKubectlTimeout(t *testing.T) {
	if _, err := exec.LookPath("kubectl"); err != nil {
		t.Skip("kubectl not installed")
	}
	addr := hangingServer(t)
	start := time.Now()
	_, err := Kubectl{Timeout: time.Second}.Run(t.Context(), "--server=http://"+addr, "get", "pods")
	var kerr *KubectlError
	if !errors.As(err, &kerr) || !kerr.TimedOut {
		t.Fatalf("err = %v, want a timeout", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Run returned after %v", d)
	}
}

// TestCrashLeavesNoProcess starts etcd in a child test binary that then
// panics, and checks etcd dies with it.
func TestCrashLeavesNoProcess(t *testing.T) {
	if dir := os.Getenv("HARNESS_CRASH_DIR"); dir != "" {
		e, err := StartEtcd(context.Background(), dir)
		if err != nil {
			fmt.Println("ERROR", err)
			os.Exit(3)
		}
		fmt.Printf("PID %d\n", e.Pid())
		panic("crashing with etcd running")
	}
	if _, err := Binary("etcd"); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashLeavesNoProcess$", "-test.v")
	cmd.Env = append(os.Environ(), "HARNESS_CRASH_DIR="+t.TempDir())
	out, _ := cmd.CombinedOutput()
	var pid int
	for _, line := range strings.Split(string(out), "\n") {
		if p, ok := strings.CutPrefix(line, "PID "); ok {
			pid, _ = strconv.Atoi(p)
		}
	}
	if pid == 0 || !strings.Contains(string(out), "crashing with etcd running") {
		t.Fatalf("child did not start etcd and crash:\n%s", out)
	}
	err := Eventually(t.Context(), 10*time.Second, func(context.Context) error {
		if alive(pid) {
			return fmt.Errorf("etcd %d still running after its parent crashed", pid)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
