package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/clustral/clustral/agent/spool"
	"github.com/clustral/clustral/coordinator/auditlog"
	"github.com/clustral/clustral/pkg/atomicfile"
	"github.com/clustral/clustral/pkg/coordclient"
	"github.com/clustral/clustral/proto"
)

func newAuditCmd(g *globals) *cobra.Command {
	var (
		categories, codes, severities []string
		user, cluster, resource       string
		since, from, to, search       string
		correlation                   string
		limit                         int
		follow                        bool
		interval                      time.Duration
	)
	c := &cobra.Command{
		Use:   "audit",
		Short: "Show the audit log: logins, changes, access requests and every kubectl request",
		Long: `Show audit events, oldest first: the newest --limit events that match the
filters, then with --follow every new one as it comes.

Administrators see every event; other users see their own. Each event has a
stable code (e.g. RQ001I) whose last letter is its severity: I info,
W warning, E error. The codes are listed in docs/audit-codes.md.

-o json writes JSON Lines (one event per line) for piping to jq or a SIEM.
A request's event carries its correlation id (the X-Clustral-Request-Id
header of the response) and its W3C trace id (trace_id), which the
apiserver's own traces of that request carry or link; --search finds
either; --correlation selects the events of one request or session by that
id, exactly.`,
		Example: `  clustral audit --since 1h
  clustral audit --user alice@example.com --cluster prod --resource pods
  clustral audit --category denial --severity W,E --since 1d
  clustral audit --code AR002I,AR003W --from 2026-01-01T00:00:00Z --to 2026-02-01T00:00:00Z
  clustral audit --search kube-system -o json | jq .resource
  clustral audit --search 4bf92f3577b34da6a3ce929d0e0e4736 -o json
  clustral audit --correlation c0ffee00c0ffee00
  clustral audit --follow --category request`,
		Args: cobra.NoArgs,
	}
	out := outputFlag(c)
	f := c.Flags()
	f.StringSliceVar(&categories, "category", nil, "categories: "+joinCategories()+" (comma-separated)")
	f.StringSliceVar(&codes, "code", nil, "event codes, e.g. RQ001I,DN001W")
	f.StringSliceVar(&severities, "severity", nil, "severities: I, W, E (or info, warning, error)")
	f.StringVar(&user, "user", "", "actor: a user's login, or agent:<cluster>")
	f.StringVar(&cluster, "cluster", "", "cluster name")
	f.StringVar(&resource, "resource", "", "Kubernetes resource, e.g. pods or apps/deployments")
	f.StringVar(&since, "since", "", "only events newer than this, e.g. 30m, 1h, 1d")
	f.StringVar(&from, "from", "", "only events at or after this time (RFC 3339, or a duration ago)")
	f.StringVar(&to, "to", "", "only events before this time (RFC 3339, or a duration ago)")
	f.StringVar(&search, "search", "", "free text in the request path, object, actor, metadata, correlation id or trace id")
	f.StringVar(&correlation, "correlation", "", "only the events of one request or session: its correlation id (X-Clustral-Request-Id)")
	f.IntVar(&limit, "limit", 50, "how many of the newest matching events to show; 0 shows all")
	f.BoolVarP(&follow, "follow", "f", false, "keep showing new events as they come")
	f.DurationVar(&interval, "interval", time.Second, "with --follow, how often to ask for new events")
	c.RunE = func(c *cobra.Command, _ []string) error {
		if *out != "table" && *out != "json" && *out != "yaml" {
			return usageError{fmt.Errorf("unknown output format %q (use table, json or yaml)", *out)}
		}
		if follow && *out == "yaml" {
			return usageError{errors.New("--follow writes table or json, not yaml")}
		}
		if correlation != "" && !proto.ValidRequestID(correlation) {
			return usageError{fmt.Errorf("--correlation %q is not a correlation id: it has 8 to 64 letters, digits, '_', '.' or '-' (copy it from an event's correlation field or a response's %s header)", correlation, proto.HeaderRequestID)}
		}
		q := url.Values{}
		set := func(k string, v []string) {
			if len(v) > 0 {
				q.Set(k, strings.Join(v, ","))
			}
		}
		set(proto.AuditParamCategory, categories)
		set(proto.AuditParamCode, codes)
		set(proto.AuditParamSeverity, severities)
		for k, v := range map[string]string{proto.AuditParamUser: user, proto.AuditParamCluster: cluster, proto.AuditParamResource: resource, proto.AuditParamSearch: search, proto.AuditParamCorrelation: correlation} {
			if v != "" {
				q.Set(k, v)
			}
		}
		now := now()
		if since != "" {
			if from != "" {
				return usageError{errors.New("use --since or --from, not both")}
			}
			from = since
		}
		for k, v := range map[string]string{proto.AuditParamFrom: from, proto.AuditParamTo: to} {
			if v == "" {
				continue
			}
			t, err := parseWhen(v, now)
			if err != nil {
				return usageError{fmt.Errorf("--%s: %w", k, err)}
			}
			q.Set(k, t.UTC().Format(time.RFC3339Nano))
		}
		_, api, err := g.session()
		if err != nil {
			return err
		}
		evs, followCursor, err := newestAudit(c.Context(), api, q, limit)
		if err != nil {
			return cliErr(err)
		}
		slices.Reverse(evs)
		w := &auditWriter{w: g.stdout, format: *out}
		if !follow && *out == "yaml" {
			b, err := yaml.Marshal(evs)
			if err != nil {
				return err
			}
			_, err = g.stdout.Write(b)
			return err
		}
		if err := w.write(evs, true); err != nil {
			return err
		}
		if !follow {
			return nil
		}
		return followAudit(c.Context(), api, q, followCursor, interval, w)
	}
	c.AddCommand(newAuditVerifyCmd(g), newAuditCheckpointCmd(g))
	return c
}

func joinCategories() string {
	var s []string
	for _, c := range proto.AuditCategories {
		s = append(s, string(c))
	}
	return strings.Join(s, ", ")
}

// parseWhen reads an RFC 3339 time, or a duration meaning that long ago.
func parseWhen(v string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	d, err := parseDuration(v)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither an RFC 3339 time (2026-01-02T15:04:05Z) nor a duration (30m, 1h, 1d)", v)
	}
	return now.Add(-d), nil
}

// newestAudit returns up to limit matching events (all with limit 0),
// newest first, and the cursor that follows the log from now.
func newestAudit(ctx context.Context, api *coordclient.Client, q url.Values, limit int) ([]proto.AuditEvent, string, error) {
	var out []proto.AuditEvent
	follow := ""
	cursor := ""
	for {
		pq := cloneValues(q)
		pq.Set(proto.AuditParamLimit, "1000")
		if limit > 0 {
			pq.Set(proto.AuditParamLimit, strconv.Itoa(min(1000, limit-len(out))))
		}
		if cursor != "" {
			pq.Set(proto.AuditParamCursor, cursor)
		}
		var page proto.AuditPage
		if err := api.Do(ctx, "GET", proto.APIVersion+"/audit/events?"+pq.Encode(), nil, &page); err != nil {
			return nil, "", err
		}
		if follow == "" {
			follow = page.Follow
		}
		out = append(out, page.Events...)
		if page.Next == "" || limit > 0 && len(out) >= limit {
			return out, follow, nil
		}
		cursor = page.Next
	}
}

func cloneValues(q url.Values) url.Values {
	c := url.Values{}
	for k, v := range q {
		c[k] = slices.Clone(v)
	}
	return c
}

// followAudit polls for events after cursor until ctx is done.
func followAudit(ctx context.Context, api *coordclient.Client, q url.Values, cursor string, every time.Duration, w *auditWriter) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		for {
			pq := cloneValues(q)
			pq.Set(proto.AuditParamLimit, "1000")
			pq.Set(proto.AuditParamOrder, "asc")
			if cursor != "" {
				pq.Set(proto.AuditParamCursor, cursor)
			}
			var page proto.AuditPage
			if err := api.Do(ctx, "GET", proto.APIVersion+"/audit/events?"+pq.Encode(), nil, &page); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return cliErr(err)
			}
			if err := w.write(page.Events, false); err != nil {
				return err
			}
			if page.Next != "" {
				cursor = page.Next
			}
			if len(page.Events) < 1000 {
				break
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// auditWriter prints events as a table or as JSON Lines.
type auditWriter struct {
	w      io.Writer
	format string
}

func (a *auditWriter) write(evs []proto.AuditEvent, header bool) error {
	if a.format == "json" {
		enc := json.NewEncoder(a.w)
		for _, e := range evs {
			if err := enc.Encode(e); err != nil {
				return err
			}
		}
		return nil
	}
	if len(evs) == 0 && !header {
		return nil
	}
	tw := tabwriter.NewWriter(a.w, 0, 4, 2, ' ', 0)
	if header {
		fmt.Fprintln(tw, "TIME\tCODE\tACTOR\tCLUSTER\tWHAT\tRESULT")
	}
	for _, e := range evs {
		what := e.Resource.String()
		if what == "" {
			what = e.Object
		}
		if what == "" {
			if info, ok := proto.LookupAuditCode(e.Code); ok {
				what = string(info.Category)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", e.Time.Local().Format("2006-01-02 15:04:05"), e.Code, e.Actor, orDash(e.Cluster), what, auditResult(e))
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func auditResult(e proto.AuditEvent) string {
	var parts []string
	if e.Status != 0 {
		parts = append(parts, strconv.Itoa(e.Status))
	} else {
		parts = append(parts, string(e.Outcome))
	}
	if e.Error != "" {
		parts = append(parts, string(e.Error))
	}
	if e.Latency > 0 {
		parts = append(parts, time.Duration(e.Latency).Round(time.Microsecond*100).String())
	}
	if r := e.Metadata["reason"]; r != "" && e.Outcome != proto.OutcomeSuccess {
		parts = append(parts, strconv.Quote(r))
	}
	return strings.Join(parts, " ")
}

func newAuditVerifyCmd(g *globals) *cobra.Command {
	var dataDir, ckptFile string
	c := &cobra.Command{
		Use:   "verify",
		Short: "Check the audit log's hash chain and signed checkpoints, and name the first record that fails",
		Long: `Check that no audit record was edited, replaced or deleted: every record
carries the hash of the one before it, from the retention anchor to the
newest. The coordinator also signs checkpoints of the log (at start, every
--audit-checkpoint-interval while it grows, when it stops); each must carry a valid
signature by the coordinator's checkpoint key, and the log must still hold
the record each one names, with the hash it signed. On a break it names the
first bad record by its sequence number and exits with status 1.

Whoever can write the coordinator's store can also delete the checkpoints
in it. Keep checkpoints outside it as well (clustral audit checkpoint), and
check the log against one with --checkpoint: the log must still extend it,
that is hold its record with its hash, and the coordinator's key must be
the one that signed it. A log that was cut back below the checkpoint, or
rewritten and rehashed up to it, fails.

Without --data-dir the coordinator checks its log (administrators only),
and each stored session recording against the digest in its session's end
event. A recording whose end event is not in the log yet (agents ship their
events in batches, and after an outage from their spool) is listed as not
vouched for: check again once its agent has shipped it.
With --data-dir the check runs here on a stopped coordinator's store, or on
a copy of it (e.g. a backup), with the checkpoint key in that directory
(audit-checkpoint.key), or, if there is none, the key of --checkpoint.`,
		Example: `  clustral audit verify
  clustral audit verify --checkpoint audit-2026-01-31.json
  clustral audit verify --data-dir /var/lib/clustral -o json`,
		Args: cobra.NoArgs,
	}
	out := outputFlag(c)
	c.Flags().StringVar(&dataDir, "data-dir", "", "check the store in this coordinator data directory, offline")
	c.Flags().StringVar(&ckptFile, "checkpoint", "", "a checkpoint file written by clustral audit checkpoint that the log must still extend")
	c.RunE = func(c *cobra.Command, _ []string) error {
		var against *proto.AuditCheckpoint
		if ckptFile != "" {
			ck, err := readCheckpointFile(ckptFile)
			if err != nil {
				return err
			}
			against = &ck
		}
		var v proto.AuditVerification
		switch {
		case dataDir != "":
			var err error
			if v, err = auditlog.VerifyDir(dataDir, against); err != nil {
				return err
			}
		case against != nil:
			if err := g.call(c.Context(), "POST", proto.APIVersion+"/audit/verify", proto.AuditVerifyRequest{Checkpoint: against}, &v); err != nil {
				return err
			}
		default:
			if err := g.call(c.Context(), "GET", proto.APIVersion+"/audit/verify", nil, &v); err != nil {
				return err
			}
		}
		if err := render(g.stdout, *out, v, func(tw *tabwriter.Writer) { verificationTable(tw, v) }); err != nil {
			return err
		}
		if !v.OK {
			return withHint(exitError, fmt.Errorf("audit record %d failed verification", v.BadSeq), "restore the store from a backup and compare; investigate who had write access to the data directory")
		}
		return nil
	}
	return c
}

// readCheckpointFile reads and checks an exported checkpoint.
func readCheckpointFile(path string) (proto.AuditCheckpoint, error) {
	f, err := os.Open(path)
	if err != nil {
		return proto.AuditCheckpoint{}, usageError{fmt.Errorf("--checkpoint: %w", err)}
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, proto.MaxAuditCheckpointBytes+1))
	if err != nil {
		return proto.AuditCheckpoint{}, fmt.Errorf("--checkpoint %s: %w", path, err)
	}
	ck, err := proto.ParseAuditCheckpoint(b)
	if err != nil {
		return ck, withHint(exitError, fmt.Errorf("--checkpoint %s: %w", path, err), "give the file clustral audit checkpoint wrote, unchanged")
	}
	return ck, nil
}

func verificationTable(tw *tabwriter.Writer, v proto.AuditVerification) {
	if !v.OK && v.BadRecording != "" {
		fmt.Fprintf(tw, "Session recording %s EDITED: %s\n", v.BadRecording, v.Problem)
		fmt.Fprintf(tw, "The audit log itself is intact: %d records, %d to %d; %d recordings checked.\n", v.Checked, v.First, v.Last, v.Recordings)
		return
	}
	if !v.OK {
		fmt.Fprintf(tw, "Audit log BROKEN at record %d: %s\n", v.BadSeq, v.Problem)
		if v.Checked > 0 {
			fmt.Fprintf(tw, "Records %d to %d before it are intact.\n", v.First, v.Last)
		}
		return
	}
	if v.Checked == 0 {
		fmt.Fprintln(tw, "Audit log intact: no records.")
	} else {
		fmt.Fprintf(tw, "Audit log intact: %d records, %d to %d.\n", v.Checked, v.First, v.Last)
	}
	if v.Recordings > 0 {
		fmt.Fprintf(tw, "Session recordings intact: %d checked against their end events.\n", v.Recordings)
	}
	if v.Unvouched > 0 {
		more := ""
		if n := v.Unvouched - len(v.UnvouchedIDs); n > 0 {
			more = fmt.Sprintf(" and %d more", n)
		}
		fmt.Fprintf(tw, "Session recordings NOT vouched for: %d, with no end event in the log (not shipped yet, or pruned): %s%s.\n",
			v.Unvouched, strings.Join(v.UnvouchedIDs, ", "), more)
	}
	switch {
	case v.Key == "":
	case v.Checkpoints == 0:
		fmt.Fprintf(tw, "No signed checkpoint in the store yet (key %s).\n", v.Key)
	default:
		checkpoints := "checkpoints"
		if v.Checkpoints == 1 {
			checkpoints = "checkpoint"
		}
		fmt.Fprintf(tw, "Signed: %d %s, the newest of record %d at %s (key %s).\n", v.Checkpoints, checkpoints, v.SignedSeq, v.SignedAt.Local().Format("2006-01-02 15:04:05"), v.Key)
	}
	if c := v.Against; c != nil {
		fmt.Fprintf(tw, "Extends the exported checkpoint of record %d, signed at %s.\n", c.Seq, c.Time.Local().Format("2006-01-02 15:04:05"))
	}
}

func newAuditCheckpointCmd(g *globals) *cobra.Command {
	var file string
	c := &cobra.Command{
		Use:   "checkpoint",
		Short: "Have the coordinator sign a checkpoint of the audit log, to keep outside it",
		Long: `Have the coordinator sign a checkpoint of its audit log as it is now: the
sequence number and hash of the newest record, and the time, signed with
the coordinator's checkpoint key. The export itself is recorded (AL001I),
and the checkpoint names that record. Administrators only.

The checkpoint is a small JSON document, written to standard output or,
with --file, to a file. Keep it where whoever can write the coordinator's
data directory cannot: an object store with retention, a ticket, a
SIEM. Later, clustral audit verify --checkpoint FILE proves that the log
still extends it: nothing up to that record was cut off or rewritten,
and the coordinator still signs with the same key.`,
		Example: `  clustral audit checkpoint > audit-$(date +%F).json
  clustral audit checkpoint --file /mnt/audit-anchors/$(date +%F).json`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			var ck proto.AuditCheckpoint
			if err := g.call(c.Context(), "POST", proto.APIVersion+"/audit/checkpoints", nil, &ck); err != nil {
				return err
			}
			if err := ck.Verify(); err != nil {
				return fmt.Errorf("the coordinator's checkpoint: %w", err)
			}
			b, err := json.MarshalIndent(ck, "", "  ")
			if err != nil {
				return err
			}
			b = append(b, '\n')
			if file == "" {
				_, err := g.stdout.Write(b)
				return err
			}
			if err := atomicfile.Write(file, b, 0o644); err != nil {
				return fmt.Errorf("write checkpoint: %w", err)
			}
			fmt.Fprintf(g.stdout, "Checkpoint of audit record %d, signed at %s by key %s, written to %s.\n", ck.Seq, ck.Time.Local().Format("2006-01-02 15:04:05"), ck.KeyID(), file)
			return nil
		},
	}
	c.Flags().StringVar(&file, "file", "", "write the checkpoint to this file instead of standard output")
	return c
}

// auditTo returns the proxy's audit hook: events go to the spool, which
// warns itself when it is full.
func auditTo(sp *spool.Spool, log *slog.Logger) func(proto.AuditEvent) {
	return func(e proto.AuditEvent) {
		if err := sp.Append(e); err != nil && !errors.Is(err, spool.ErrFull) {
			log.Error("audit spool", "err", err)
		}
	}
}
