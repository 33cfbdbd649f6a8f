package coordclient

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/clustral/clustral/proto"
)

// server answers every request with h and records the last one.
func server(t *testing.T, h http.HandlerFunc) (*httptest.Server, *http.Request) {
	t.Helper()
	var last http.Request
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		last = *r.Clone(context.Background())
		h(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, &last
}

func problem(status int, p proto.Problem) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(p)
	}
}

func TestDoAnswers(t *testing.T) {
	tests := []struct {
		name      string
		h         http.HandlerFunc
		wantErr   string
		wantProbl *proto.Problem
	}{
		{"ok", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, `{"user":{"login":"ann"}}`) }, "", nil},
		{"no content", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }, "", nil},
		{"problem with detail", problem(403, proto.Problem{Title: "Forbidden", Detail: "not an admin", Code: proto.CodeForbidden, Hint: "ask one"}),
			"Forbidden: not an admin", &proto.Problem{Title: "Forbidden", Detail: "not an admin", Code: proto.CodeForbidden, Hint: "ask one", Status: 403}},
		{"problem without detail", problem(401, proto.Problem{Title: "Unauthorized"}),
			"Unauthorized", &proto.Problem{Title: "Unauthorized", Status: 401}},
		{"pending is an error", problem(http.StatusAccepted, proto.Problem{Title: "Login pending", Code: proto.CodeLoginPending}),
			"Login pending", &proto.Problem{Title: "Login pending", Code: proto.CodeLoginPending, Status: 202}},
		{"not a problem", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "bad gateway", http.StatusBadGateway) },
			"coordinator answered 502 Bad Gateway: bad gateway", &proto.Problem{Title: "coordinator answered 502 Bad Gateway: bad gateway", Status: 502}},
		{"undecodable answer", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "{") },
			"decode coordinator answer to GET /api/v1/whoami", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, last := server(t, tt.h)
			c := New(srv.URL+"/", "tok", srv.Client())
			w, err := c.Whoami(context.Background())
			if got := last.Header.Get("Authorization"); got != "Bearer tok" {
				t.Errorf("Authorization = %q", got)
			}
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if tt.name == "ok" && w.User.Login != "ann" {
					t.Errorf("whoami = %+v", w)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
			var e *Error
			var p *proto.Problem
			if (tt.wantProbl != nil) != errors.As(err, &e) {
				t.Fatalf("errors.As(*Error) = %v for %v", e != nil, err)
			}
			if tt.wantProbl == nil {
				return
			}
			if e.Problem != *tt.wantProbl {
				t.Errorf("problem = %+v, want %+v", e.Problem, *tt.wantProbl)
			}
			if !errors.As(err, &p) || *p != *tt.wantProbl {
				t.Errorf("errors.As(*proto.Problem) = %+v", p)
			}
		})
	}
}

func TestUnreachable(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	err := New(url, "", nil).Deregister(context.Background())
	if !errors.Is(err, ErrUnreachable) || !strings.HasPrefix(err.Error(), "reach coordinator "+url+": ") {
		t.Fatalf("err = %v, want reach coordinator %s: …", err, url)
	}
	var e *Error
	if errors.As(err, &e) {
		t.Fatal("an unreachable coordinator gave an *Error")
	}
}

func TestNoTokenNoHeader(t *testing.T) {
	srv, last := server(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "{}") })
	c := New(srv.URL, "", srv.Client())
	if _, err := c.LoginStart(context.Background(), proto.LoginStartRequest{}); err != nil {
		t.Fatal(err)
	}
	if h, ok := last.Header["Authorization"]; ok {
		t.Errorf("Authorization sent without a token: %q", h)
	}
	if last.Method != "POST" || last.URL.Path != "/api/v1/login/start" || last.Header.Get("Content-Type") != "application/json" {
		t.Errorf("request = %s %s %q", last.Method, last.URL.Path, last.Header.Get("Content-Type"))
	}
	if got := c.WithToken("node").Token(); got != "node" || c.Token() != "" {
		t.Errorf("WithToken changed the original or did not take: %q %q", got, c.Token())
	}
}

func TestMapStream(t *testing.T) {
	srv, last := server(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "{}\n") })
	eps := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:41641"), netip.MustParseAddrPort("[2001:db8::1]:41641")}
	body, err := New(srv.URL+"/", "node", srv.Client()).MapStream(context.Background(), eps)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(body)
	body.Close()
	if string(b) != "{}\n" {
		t.Errorf("body = %q", b)
	}
	if last.URL.Path != MapPath || last.URL.Query().Get(proto.MapEndpointsParam) != "192.0.2.1:41641,[2001:db8::1]:41641" ||
		last.Header.Get("Accept") != "application/x-ndjson" || last.Header.Get("Authorization") != "Bearer node" {
		t.Errorf("request = %s %v", last.URL, last.Header)
	}

	srv2, _ := server(t, problem(401, proto.Problem{Title: "node token revoked", Code: proto.CodeUnauthenticated}))
	_, err = New(srv2.URL, "node", srv2.Client()).MapStream(context.Background(), nil)
	if !IsRefused(err) {
		t.Fatalf("MapStream = %v, want a refusal", err)
	}
}

func TestDialRelayRefused(t *testing.T) {
	srv, last := server(t, problem(403, proto.Problem{Title: "Forbidden"}))
	_, err := New(srv.URL, "node", srv.Client()).DialRelay(context.Background())
	if !IsRefused(err) {
		t.Fatalf("DialRelay = %v, want a refusal", err)
	}
	if last.URL.Path != proto.RelayPath || last.Header.Get("Upgrade") != proto.RelayUpgrade {
		t.Errorf("request = %s %v", last.URL, last.Header)
	}
}

func TestBackoff(t *testing.T) {
	tests := []struct{ lo, hi time.Duration }{
		{100 * time.Millisecond, 800 * time.Millisecond},
		{100 * time.Millisecond, 300 * time.Millisecond},
		{time.Second, time.Second},
		{time.Second, 0}, // max below min: min
	}
	for _, tt := range tests {
		hi := max(tt.hi, tt.lo)
		for range 20 {
			b := Backoff(tt.lo, tt.hi)
			for attempt := range 40 {
				want := min(tt.lo<<min(attempt, 30), hi)
				if d := b.Step(); d < want/2 || d > want {
					t.Fatalf("Backoff(%v, %v) step %d = %v, want in [%v, %v]", tt.lo, tt.hi, attempt, d, want/2, want)
				}
			}
		}
	}
}

func TestRetry(t *testing.T) {
	refused := &Error{proto.Problem{Title: "Unauthorized", Status: 401}}
	down := errors.New("connection refused")
	tests := []struct {
		name      string
		errs      []error // fn's answers, in turn; after the last, nil
		retries   int
		wantCalls int
		wantErr   error
	}{
		{"first try", nil, 3, 1, nil},
		{"after two failures", []error{down, down}, 3, 3, nil},
		{"refusal ends it", []error{down, refused, down}, 3, 2, refused},
		{"out of retries", []error{down, down, down, down}, 2, 3, down},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls, retried int
			err := Retry(context.Background(), Fixed(time.Millisecond, tt.retries), func(context.Context) error {
				calls++
				if calls <= len(tt.errs) {
					return tt.errs[calls-1]
				}
				return nil
			}, func(error, time.Duration) { retried++ })
			if err != tt.wantErr || calls != tt.wantCalls || retried != calls-1 {
				t.Errorf("Retry = %v after %d calls (%d retries), want %v after %d", err, calls, retried, tt.wantErr, tt.wantCalls)
			}
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Retry(ctx, Fixed(time.Hour, 1), func(context.Context) error { return down }, nil); err != context.Canceled {
		t.Errorf("Retry with a done context = %v", err)
	}
}

// TestReplicas: a Client of several replicas sends to the one in use and
// moves on when it cannot reach it: any request whose connection was
// refused, a GET whatever failed, never a request the replica may have
// taken.
func TestReplicas(t *testing.T) {
	// down is a URL where nothing listens.
	gone := httptest.NewServer(http.NotFoundHandler())
	down := gone.URL
	gone.Close()
	// cut takes a request and drops the connection without answering.
	cut, _ := server(t, func(w http.ResponseWriter, r *http.Request) {
		io.ReadAll(r.Body)
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
	})
	var seen []string
	up, _ := server(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		seen = append(seen, r.Method+" "+r.URL.Path+" "+string(b))
		w.Header().Set(proto.HeaderReplica, "replica-b")
		w.Write([]byte("{}"))
	})
	tests := []struct {
		name     string
		bases    string
		method   string
		wantSeen string // "" when the request must fail
		wantBase string
		wantURLs string // the one in use first
	}{
		{"refused POST moves on", down + ", " + up.URL, http.MethodPost, "POST /x {\"a\":1}", up.URL, up.URL + "," + down},
		{"dropped GET moves on", cut.URL + "," + up.URL, http.MethodGet, "GET /x ", up.URL, up.URL + "," + cut.URL},
		{"dropped POST does not", cut.URL + "," + up.URL, http.MethodPost, "", cut.URL, cut.URL + "," + up.URL},
		{"all down", down + "," + down, http.MethodGet, "", down, down + "," + down},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seen = nil
			c := New(tt.bases, "tok", nil)
			var body any
			if tt.method == http.MethodPost {
				body = map[string]int{"a": 1}
			}
			err := c.Do(context.Background(), tt.method, "/x", body, nil)
			if tt.wantSeen == "" {
				if err == nil || !errors.Is(err, ErrUnreachable) {
					t.Fatalf("Do = %v, want an ErrUnreachable error", err)
				}
				if len(seen) != 0 {
					t.Fatalf("the next replica got %v", seen)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				if len(seen) != 1 || seen[0] != tt.wantSeen {
					t.Fatalf("the answering replica saw %q, want %q once", seen, tt.wantSeen)
				}
				if c.Replica() != "replica-b" {
					t.Errorf("Replica = %q, want replica-b", c.Replica())
				}
			}
			if c.BaseURL() != tt.wantBase {
				t.Errorf("BaseURL = %s, want %s", c.BaseURL(), tt.wantBase)
			}
			if c.URLs() != tt.wantURLs {
				t.Errorf("URLs = %s, want %s", c.URLs(), tt.wantURLs)
			}
			// A copy with another token uses the same replica.
			if w := c.WithToken("other"); w.BaseURL() != c.BaseURL() {
				t.Errorf("WithToken's BaseURL = %s, want %s", w.BaseURL(), c.BaseURL())
			}
		})
	}
}

// TestPutRecordingMovesOn: a recording whose first coordinator cannot be
// reached reaches the next one whole.
func TestPutRecordingMovesOn(t *testing.T) {
	gone := httptest.NewServer(http.NotFoundHandler())
	down := gone.URL
	gone.Close()
	var got string
	up, _ := server(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got = r.Method + " " + r.URL.Path + " " + string(b)
		w.Write([]byte(`{"bytes":5}`))
	})
	f, err := os.CreateTemp(t.TempDir(), "rec")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.WriteString("cast\n")
	f.Seek(0, io.SeekStart)
	info, err := New(down+","+up.URL, "tok", nil).PutRecording(context.Background(), "abc-1", f)
	if err != nil || info.Bytes != 5 || got != "PUT /api/v1/recordings/abc-1 cast\n" {
		t.Fatalf("PutRecording = %+v, %v; the coordinator got %q", info, err, got)
	}
}
