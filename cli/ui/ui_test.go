package ui

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/clustral/clustral/pkg/testkit"
	"github.com/clustral/clustral/proto"
)

func TestMain(m *testing.M) { testkit.VerifyNoLeaks(m) }

// fakeAgent serves a live stream (a snapshot of one pod, then a change)
// and a pod log, as an agent does.
func fakeAgent(t *testing.T) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+proto.LiveStreamPath, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", proto.LiveContentType)
		since := r.URL.Query().Get("since")
		if since == "" {
			fmt.Fprintln(w, `{"type":"snapshot","epoch":"e","rev":2}`)
			fmt.Fprintln(w, `{"type":"upsert","epoch":"e","rev":1,"kind":"pods","namespace":"web","name":"api-1","object":{"metadata":{"name":"api-1"}}}`)
			fmt.Fprintln(w, `{"type":"synced","epoch":"e","rev":2}`)
		}
		fmt.Fprintln(w, `{"type":"upsert","epoch":"e","rev":3,"kind":"pods","namespace":"web","name":"api-2","object":{"metadata":{"name":"api-2"}}}`)
		fmt.Fprintf(w, `{"type":"ping","epoch":"e","rev":3}`+"\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	mux.HandleFunc("GET /api/v1/namespaces/web/pods/api-1/log", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("follow") != "true" {
			t.Errorf("log not followed: %s", r.URL)
		}
		fmt.Fprintln(w, "hello")
		fmt.Fprintln(w, "world")
	})
	mux.HandleFunc("GET /api/v1/namespaces/web/pods/secret/log", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "alice may not get pods/log", http.StatusForbidden)
	})
	s := httptest.NewServer(mux)
	t.Cleanup(s.Close)
	return s
}

type page struct {
	srv  *httptest.Server
	host string
	link string
	c    *http.Client
}

func newPage(t *testing.T) *page {
	t.Helper()
	agent := fakeAgent(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s, link := New(l.Addr().String(), []Cluster{{Name: "prod", Base: agent.URL, Client: agent.Client()}}, nil)
	srv := httptest.NewUnstartedServer(s)
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	jar := &cookieJar{}
	c := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	t.Cleanup(c.CloseIdleConnections)
	return &page{srv: srv, host: l.Addr().String(), link: link, c: c}
}

// cookieJar keeps the one cookie of the page.
type cookieJar struct{ cookies []*http.Cookie }

func (j *cookieJar) SetCookies(_ *url.URL, cs []*http.Cookie) { j.cookies = append(j.cookies, cs...) }
func (j *cookieJar) Cookies(*url.URL) []*http.Cookie          { return j.cookies }

func (p *page) get(t *testing.T, path string, hdr ...string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+p.host+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := p.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { res.Body.Close() })
	return res
}

func (p *page) signIn(t *testing.T) {
	t.Helper()
	u, _ := url.Parse(p.link)
	res := p.get(t, "/prod/ns/web?"+u.RawQuery)
	if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/prod/ns/web" {
		t.Fatalf("token exchange: %d to %q, want 303 to /prod/ns/web", res.StatusCode, res.Header.Get("Location"))
	}
	if len(p.c.Jar.(*cookieJar).cookies) != 1 {
		t.Fatal("no session cookie")
	}
	ck := p.c.Jar.(*cookieJar).cookies[0]
	if !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode {
		t.Errorf("cookie %+v: want HttpOnly and SameSite=Strict", ck)
	}
}

// The token's redirect stays on the page whatever the path.
func TestExchangeRedirectsHome(t *testing.T) {
	p := newPage(t)
	u, _ := url.Parse(p.link)
	res := p.get(t, "//evil.example/x?"+u.RawQuery)
	if loc := res.Header.Get("Location"); res.StatusCode != http.StatusSeeOther || loc != "/evil.example/x" {
		t.Errorf("redirect %d to %q, want 303 to /evil.example/x", res.StatusCode, loc)
	}
}

func TestPageGuards(t *testing.T) {
	p := newPage(t)
	if res := p.get(t, "/"); res.StatusCode != http.StatusUnauthorized {
		t.Errorf("without a session: %d, want 401", res.StatusCode)
	}
	p.signIn(t)
	u, _ := url.Parse(p.link)
	for _, tc := range []struct {
		name   string
		path   string
		hdr    []string
		status int
	}{
		{"deep link", "/prod/ns/web/pods/api-7c9", nil, http.StatusOK},
		{"token used twice", "/?" + u.RawQuery, nil, http.StatusUnauthorized},
		{"other host (DNS rebinding)", "/", []string{"Host", "evil.example:80"}, http.StatusMisdirectedRequest},
		{"other origin", "/api/clusters", []string{"Origin", "http://evil.example"}, http.StatusForbidden},
		{"cross-site fetch", "/api/clusters", []string{"Sec-Fetch-Site", "cross-site"}, http.StatusForbidden},
		{"same origin", "/api/clusters", []string{"Origin", "http://" + p.host}, http.StatusOK},
		{"shared style", "/static/console.css", nil, http.StatusOK},
		{"script", "/static/ui.js", nil, http.StatusOK},
		{"unknown cluster", "/api/live/staging", nil, http.StatusNotFound},
		{"bad pod name", "/api/logs/prod/web/Bad_Name", nil, http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, "http://"+p.host+tc.path, nil)
			for i := 0; i+1 < len(tc.hdr); i += 2 {
				if tc.hdr[i] == "Host" {
					req.Host = tc.hdr[i+1]
				} else {
					req.Header.Set(tc.hdr[i], tc.hdr[i+1])
				}
			}
			res, err := p.c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != tc.status {
				t.Errorf("status %d, want %d", res.StatusCode, tc.status)
			}
			csp := res.Header.Get("Content-Security-Policy")
			if !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe") {
				t.Errorf("CSP %q", csp)
			}
			if res.Header.Get("Referrer-Policy") != "no-referrer" {
				t.Errorf("Referrer-Policy %q: the link's token must not leak", res.Header.Get("Referrer-Policy"))
			}
		})
	}
	req, _ := http.NewRequest(http.MethodPost, "http://"+p.host+"/api/clusters", nil)
	res, err := p.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d, want 405", res.StatusCode)
	}
}

// events reads server-sent events until n are read.
func events(t *testing.T, res *http.Response, n int) []string {
	t.Helper()
	out := make(chan []string, 1)
	go func() {
		var got []string
		var ev, id string
		sc := bufio.NewScanner(res.Body)
		for sc.Scan() && len(got) < n {
			l := sc.Text()
			switch {
			case strings.HasPrefix(l, "event: "):
				ev = strings.TrimPrefix(l, "event: ")
			case strings.HasPrefix(l, "id: "):
				id = strings.TrimPrefix(l, "id: ")
			case strings.HasPrefix(l, "data: "):
				got = append(got, ev+" "+id+" "+strings.TrimPrefix(l, "data: "))
				id = ""
			}
		}
		out <- got
	}()
	return testkit.Recv(t, out, "server-sent events")
}

func TestLiveRelay(t *testing.T) {
	p := newPage(t)
	p.signIn(t)
	res := p.get(t, "/api/live/prod")
	if ct := res.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q", ct)
	}
	got := events(t, res, 5)
	// Only the end of the snapshot and later changes carry an id: a
	// browser that reconnects resumes from a whole state.
	want := []string{"live  ", "live  ", "live e:2 ", "live e:3 ", "ping  "}
	for i, w := range want {
		if !strings.HasPrefix(got[i], w) {
			t.Errorf("event %d: %q, want prefix %q", i, got[i], w)
		}
	}
	res = p.get(t, "/api/live/prod", "Last-Event-ID", "e:2")
	if got := events(t, res, 1); !strings.Contains(got[0], `"rev":3`) {
		t.Errorf("resumed at e:2: first event %q, want rev 3", got[0])
	}
}

func TestLogRelay(t *testing.T) {
	p := newPage(t)
	p.signIn(t)
	got := events(t, p.get(t, "/api/logs/prod/web/api-1"), 3)
	if got[0] != `line  "hello"` || got[1] != `line  "world"` || !strings.HasPrefix(got[2], "end ") {
		t.Errorf("log events %q", got)
	}
	got = events(t, p.get(t, "/api/logs/prod/web/secret"), 1)
	if !strings.HasPrefix(got[0], "failure ") || !strings.Contains(got[0], "may not") {
		t.Errorf("refused log: %q, want a failure naming the refusal", got)
	}
}

func TestLogLines(t *testing.T) {
	tests := []struct {
		name string
		in   string
		max  int
		want []string
	}{
		{"lines", "a\nbb\n", 8, []string{"a", "bb"}},
		{"no final newline", "a\nbb", 8, []string{"a", "bb"}},
		{"empty lines kept", "a\n\n\nb\n", 8, []string{"a", "", "", "b"}},
		{"carriage returns", "a\r\nb\r\n", 8, []string{"a", "b"}},
		{"nothing", "", 8, nil},
		{"long line cut, the next whole", "0123456789abc\nnext\n", 4, []string{"0123 [line cut at 4 bytes]", "next"}},
		{"long last line", "ok\n0123456789", 4, []string{"ok", "0123 [line cut at 4 bytes]"}},
		{"longer than the reader's buffer", strings.Repeat("x", 200<<10) + "\ny\n", 100 << 10, []string{strings.Repeat("x", 100<<10) + " [line cut at 102400 bytes]", "y"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			err := logLines(strings.NewReader(tt.in), tt.max, func(l string) error {
				got = append(got, l)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				if len(got) > 0 && len(got[0]) > 80 {
					t.Fatalf("got %d lines, first %d bytes; want %d lines", len(got), len(got[0]), len(tt.want))
				}
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestLogLinesStopsOnErrors(t *testing.T) {
	broken := errors.New("connection reset")
	err := logLines(io.MultiReader(strings.NewReader("a\nb"), iotest.ErrReader(broken)), 8, func(string) error { return nil })
	if !errors.Is(err, broken) {
		t.Errorf("read error: got %v, want %v", err, broken)
	}
	stop := errors.New("client gone")
	n := 0
	err = logLines(strings.NewReader("a\nb\nc\n"), 8, func(string) error { n++; return stop })
	if !errors.Is(err, stop) || n != 1 {
		t.Errorf("line error: got %v after %d lines, want %v after 1", err, n, stop)
	}
}
