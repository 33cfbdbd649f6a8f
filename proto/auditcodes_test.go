package proto

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/clustral/clustral/pkg/testkit"
)

var updateAuditDocs = flag.Bool("update", false, "rewrite docs/audit-codes.md from the catalogue")

var auditCodeRE = regexp.MustCompile(`^[A-Z]{2}[0-9]{3}[IWE]$`)

func TestAuditCatalogue(t *testing.T) {
	seen := map[AuditCode]bool{}
	for _, c := range AuditCodes {
		if !auditCodeRE.MatchString(string(c.Code)) {
			t.Errorf("code %q is not two letters, three digits and I, W or E", c.Code)
		}
		if seen[c.Code[:5]] {
			t.Errorf("code %s: number %s used twice", c.Code, c.Code[:5])
		}
		seen[c.Code[:5]] = true
		if !slices.Contains(AuditCategories, c.Category) {
			t.Errorf("code %s: unknown category %q", c.Code, c.Category)
		}
		if c.Description == "" {
			t.Errorf("code %s has no description", c.Code)
		}
		if SeverityName(c.Code.Severity()) == "" {
			t.Errorf("code %s has no severity", c.Code)
		}
	}
}

// TestAuditCodesDoc keeps docs/audit-codes.md in step with the catalogue:
// run `go test ./proto -run TestAuditCodesDoc -update` after changing it.
func TestAuditCodesDoc(t *testing.T) {
	var b bytes.Buffer
	b.WriteString("# Audit event codes\n\nGenerated from proto/auditcodes.go by `go test ./proto -run TestAuditCodesDoc -update`; do not edit.\n\n")
	b.WriteString("Every audit event has a stable code: two letters for the area, three digits, and a severity suffix: I (info), W (warning), E (error). A code's meaning never changes. Filter on them with `clustral audit --code` and `--severity`.\n\n")
	for _, cat := range AuditCategories {
		fmt.Fprintf(&b, "## %s\n\n| Code | Severity | Description |\n|---|---|---|\n", cat)
		for _, c := range AuditCodes {
			if c.Category == cat {
				fmt.Fprintf(&b, "| `%s` | %s | %s |\n", c.Code, SeverityName(c.Code.Severity()), c.Description)
			}
		}
		b.WriteString("\n")
	}
	testkit.Golden(t, filepath.Join("..", "docs", "audit-codes.md"), b.Bytes(), *updateAuditDocs, "go test ./proto -run TestAuditCodesDoc -update")
}

func TestAuditHash(t *testing.T) {
	e := AuditEvent{Seq: 1, Code: AuditRequest, Category: CategoryRequest, Time: time.Unix(1, 0).UTC(), Actor: "alice",
		Metadata: map[string]string{"b": "2", "a": "1"}, PrevHash: "00"}
	h := AuditHash(e)
	e.Hash = h
	if AuditHash(e) != h {
		t.Fatal("hash depends on Hash")
	}
	for name, f := range map[string]func(*AuditEvent){
		"actor":    func(e *AuditEvent) { e.Actor = "mallory" },
		"prev":     func(e *AuditEvent) { e.PrevHash = "01" },
		"metadata": func(e *AuditEvent) { e.Metadata = map[string]string{"a": "1", "b": "3"} },
		"seq":      func(e *AuditEvent) { e.Seq = 2 },
	} {
		c := e
		c.Metadata = map[string]string{"b": "2", "a": "1"}
		f(&c)
		if AuditHash(c) == h {
			t.Errorf("changing %s does not change the hash", name)
		}
	}
}

// TestSealAudit: the record SealAudit makes is the JSON encoding of the
// event with its hash, for events with and without the optional fields.
func TestSealAudit(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	tests := []struct {
		name string
		e    AuditEvent
	}{
		{"least", AuditEvent{Code: AuditRequest, Time: at}},
		{"registration", AuditEvent{Seq: 7, Code: AuditRequest, Category: CategoryRequest, Time: at, Actor: "alice@example.com",
			Object: "dev_1", Outcome: OutcomeSuccess, Metadata: map[string]string{"key": "k", "hostname": "h"}, PrevHash: "00"}},
		{"every field", AuditEvent{Seq: 42, Code: AuditRequest, Category: CategoryRequest, Time: at, Actor: "a\"<b>", Cluster: "prod",
			Object: "o", Resource: &AuditResource{Verb: "get", Path: "/api"}, Outcome: OutcomeDenied, Status: 403, Bytes: 9,
			Latency: Duration(time.Millisecond), Error: "E", Correlation: "c", TraceID: "4bf92f3577b34da6a3ce929d0e0e4736",
			Metadata: map[string]string{"z": "1", "a": "2"}, Source: "s", SourceSeq: 3, PrevHash: "ff", Hash: "stale"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sealed, raw := SealAudit(tt.e)
			if want := AuditHash(tt.e); sealed.Hash != want {
				t.Fatalf("hash %s, want AuditHash %s", sealed.Hash, want)
			}
			want, err := json.Marshal(sealed)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(raw, want) {
				t.Errorf("record\n%s\nwant the event's JSON\n%s", raw, want)
			}
		})
	}
}

// TestAuditHashStable pins the hash of a record as it is stored today. A
// record's hash is checked again whenever the log is verified, over the
// record decoded into today's AuditEvent; if a new field changed the
// encoding of records written before it (a field without omitempty), every
// one of them would fail verification as edited. Add fields with
// omitempty, and keep this hash.
func TestAuditHashStable(t *testing.T) {
	e := AuditEvent{
		Seq: 42, Code: AuditRequest, Category: CategoryRequest, Time: time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC),
		Actor: "alice@example.com", Cluster: "prod", Outcome: OutcomeSuccess, Status: 200,
		Resource: &AuditResource{Verb: "list", Resource: "pods", Namespace: "default", Path: "/api/v1/namespaces/default/pods"},
		Latency:  Duration(12 * time.Millisecond), Correlation: "c-1", Source: "src", SourceSeq: 7,
		PrevHash: "00",
	}
	const want = "349d8d37596e864c5366b61747cd3d6147bff3489698ae6a9e8f8efd1b623d42"
	if got := AuditHash(e); got != want {
		t.Fatalf("the hash of a stored record changed: %s, was %s; records written before would fail verification", got, want)
	}
}

// TestAuditHashTraceID: a record stored before events had a trace id
// decodes and verifies as it did, and a trace id is part of what is
// hashed, so editing it breaks the chain.
func TestAuditHashTraceID(t *testing.T) {
	const stored = `{"seq":42,"code":"RQ001I","category":"request","time":"2026-01-02T03:04:05.000006Z","actor":"alice@example.com","cluster":"prod","resource":{"verb":"list","resource":"pods","namespace":"default","path":"/api/v1/namespaces/default/pods"},"outcome":"success","status":200,"latency":"12ms","correlation":"c-1","source":"src","source_seq":7,"prev_hash":"00","hash":"349d8d37596e864c5366b61747cd3d6147bff3489698ae6a9e8f8efd1b623d42"}`
	var e AuditEvent
	if err := json.Unmarshal([]byte(stored), &e); err != nil {
		t.Fatal(err)
	}
	if got := AuditHash(e); got != e.Hash {
		t.Fatalf("a record without trace_id hashes as %s, was stored as %s", got, e.Hash)
	}
	e.TraceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	withTrace := AuditHash(e)
	if withTrace == e.Hash {
		t.Fatal("the trace id is not part of the hash")
	}
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	var back AuditEvent
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.TraceID != e.TraceID || AuditHash(back) != withTrace {
		t.Fatalf("after a round trip through JSON: trace id %q, hash %s, want %q, %s", back.TraceID, AuditHash(back), e.TraceID, withTrace)
	}
}
