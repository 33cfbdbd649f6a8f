package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/clustral/clustral/proto"
)

func newSessionsCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "sessions",
		Short: "List, play and export recorded sessions; list and end live ones (administrators)",
		Long: `Sessions are the kubectl exec, attach and debug sessions that the agent
recorded, for roles with a recording policy (clustral roles create
--recording). A recording is asciicast v2: export writes it for any
asciicast player, play replays it in this terminal. Each recording's
digest is in its session's end event (RQ004I), so clustral audit verify
proves it was not edited.

Live sessions are the long-lived requests open now through any agent:
watches, followed logs, exec, attach and port-forward. live lists them,
end cuts one at once (audited as AR006W).`,
		Example: `  clustral sessions ls --cluster prod --since 1d
  clustral sessions play 1a2b3c4d5e6f-2k --speed 2
  clustral sessions export 1a2b3c4d5e6f-2k > session.cast
  clustral sessions live
  clustral sessions end 1a2b3c4d5e6f-2k`,
	}
	c.AddCommand(newSessionsLsCmd(g), newSessionsPlayCmd(g), newSessionsExportCmd(g), newSessionsLiveCmd(g), newSessionsEndCmd(g))
	return c
}

func newSessionsLiveCmd(g *globals) *cobra.Command {
	return callCmd(g, &cobra.Command{
		Use:     "live",
		Short:   "List the live sessions open now through any agent, oldest first",
		Example: "  clustral sessions live -o json",
		Args:    cobra.NoArgs,
	}, "GET", func([]string) string { return proto.LiveSessionsPath }, printLiveSessions)
}

func printLiveSessions(tw *tabwriter.Writer, ls proto.LiveSessions) {
	if len(ls.Streams) == 0 {
		fmt.Fprintln(tw, "No live sessions.")
	} else {
		fmt.Fprintln(tw, "ID\tSTARTED\tUSER\tCLUSTER\tKIND\tWHAT\tAGENT")
		for _, s := range ls.Streams {
			what := s.Target()
			if len(s.Command) > 0 {
				what += " -- " + strings.Join(s.Command, " ")
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.ID, s.Started.UTC().Format(time.RFC3339), s.User, s.Cluster, s.Kind, what, s.AgentHost)
		}
	}
	if len(ls.Stale) > 0 {
		fmt.Fprintf(tw, "Not listed: the sessions of agents that stopped reporting (%s).\n", strings.Join(ls.Stale, ", "))
	}
}

func newSessionsEndCmd(g *globals) *cobra.Command {
	return callCmd(g, &cobra.Command{
		Use:     "end <id>",
		Short:   "End a live session now (its id from clustral sessions live)",
		Example: "  clustral sessions end 1a2b3c4d5e6f-2k",
		Args:    cobra.ExactArgs(1),
	}, "POST", func(args []string) string { return apiPath("live-sessions", args[0], "end") },
		func(tw *tabwriter.Writer, e proto.EndLiveSession) {
			fmt.Fprintf(tw, "Ended the %s of %s on %s; its agent cut it.\n", e.Stream.Kind, e.Stream.User, e.Stream.Cluster)
		})
}

func newSessionsLsCmd(g *globals) *cobra.Command {
	var user, cluster, pod, since string
	c := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List recorded sessions, newest first",
		Example: `  clustral sessions ls --user alice@example.com --since 2h
  clustral sessions ls --pod web-0 -o json`,
		Args: cobra.NoArgs,
	}
	out := outputFlag(c)
	f := c.Flags()
	f.StringVar(&user, "user", "", "only sessions of this user (login)")
	f.StringVar(&cluster, "cluster", "", "only sessions on this cluster")
	f.StringVar(&pod, "pod", "", "only sessions in this pod")
	f.StringVar(&since, "since", "", "only sessions started after this: a duration ago (30m, 1d) or an RFC 3339 time")
	c.RunE = func(c *cobra.Command, _ []string) error {
		q := url.Values{}
		for k, v := range map[string]string{proto.RecordingParamUser: user, proto.RecordingParamCluster: cluster, proto.RecordingParamPod: pod} {
			if v != "" {
				q.Set(k, v)
			}
		}
		if since != "" {
			t, err := parseWhen(since, now())
			if err != nil {
				return usageError{fmt.Errorf("--since: %w", err)}
			}
			q.Set(proto.RecordingParamSince, t.UTC().Format(time.RFC3339))
		}
		path := proto.APIVersion + "/recordings"
		if len(q) > 0 {
			path += "?" + q.Encode()
		}
		return renderCall(c.Context(), g, *out, "GET", path, nil, printSessions)
	}
	return c
}

func printSessions(tw *tabwriter.Writer, rs []proto.RecordingInfo) {
	if len(rs) == 0 {
		fmt.Fprintln(tw, "No recorded sessions.")
		return
	}
	fmt.Fprintln(tw, "ID\tSTARTED\tUSER\tCLUSTER\tPOD\tCONTAINER\tCOMMAND\tSIZE")
	for _, r := range rs {
		m := r.Session
		cmd := strings.Join(m.Command, " ")
		if cmd == "" {
			cmd = "(" + m.Subresource + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s/%s\t%s\t%s\t%d\n", m.ID, m.Start.UTC().Format(time.RFC3339), m.User, m.Cluster,
			m.Namespace, m.Pod, m.Container, cmd, r.Bytes)
	}
}

// openRecording opens the stored recording id.
func openRecording(ctx context.Context, g *globals, id string) (io.ReadCloser, error) {
	_, api, err := g.session()
	if err != nil {
		return nil, err
	}
	rc, err := api.Open(ctx, apiPath("recordings", id), nil)
	if err != nil {
		return nil, cliErr(err)
	}
	return rc, nil
}

func newSessionsExportCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "export <id>",
		Short:   "Write a recording, asciicast v2, to standard output",
		Example: "  clustral sessions export 1a2b3c4d5e6f-2k > session.cast",
		Args:    cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			rc, err := openRecording(c.Context(), g, args[0])
			if err != nil {
				return err
			}
			defer rc.Close()
			if _, err := io.Copy(g.stdout, rc); err != nil {
				return fmt.Errorf("export recording %s: %w", args[0], err)
			}
			return nil
		},
	}
}

// playAfter is the timer between the events of a replay; tests replace
// it.
var playAfter = time.After

// Keys of a replay on a terminal.
const (
	keyPause = ' '  // pause, and go on
	keySkip  = '.'  // skip the rest of the current pause
	keyQuit  = 'q'  // stop
	keyCtrlC = 0x03 // stop (the terminal is raw: no SIGINT)
)

// errQuit ends a replay the user stopped.
var errQuit = errors.New("stopped")

// playKeys puts the terminal on stdin in raw mode and returns the keys
// typed, and the function that restores the terminal. Without a terminal
// it returns a nil channel (no keys) and a no-op.
func playKeys(stdin io.Reader, stderr io.Writer) (<-chan byte, func()) {
	f, ok := stdin.(*os.File)
	if !ok || !interactive(stdin, stderr) {
		return nil, func() {}
	}
	old, err := term.MakeRaw(int(f.Fd()))
	if err != nil {
		return nil, func() {}
	}
	keys := make(chan byte, 8)
	// The reader ends with the process: a read of a terminal cannot be
	// cancelled, and the command returns right after the replay.
	go func() {
		b := make([]byte, 1)
		for {
			if _, err := f.Read(b); err != nil {
				close(keys)
				return
			}
			keys <- b[0]
		}
	}()
	return keys, func() { term.Restore(int(f.Fd()), old) }
}

// pauseFor waits d between two events, or less: keySkip ends the wait,
// keyPause holds the replay until it is pressed again, keyQuit and
// Ctrl-C stop it (errQuit).
func pauseFor(ctx context.Context, d time.Duration, keys <-chan byte) error {
	timer := playAfter(d)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer:
			return nil
		case k, ok := <-keys:
			switch {
			case !ok:
				keys = nil
			case k == keySkip:
				return nil
			case k == keyQuit || k == keyCtrlC:
				return errQuit
			case k == keyPause:
				for held := true; held; {
					select {
					case <-ctx.Done():
						return ctx.Err()
					case k, ok := <-keys:
						switch {
						case !ok:
							return nil
						case k == keyQuit || k == keyCtrlC:
							return errQuit
						case k == keyPause:
							held = false
						}
					}
				}
				return nil // the rest of the pause is skipped too
			}
		}
	}
}

func newSessionsPlayCmd(g *globals) *cobra.Command {
	var (
		speed   float64
		maxIdle time.Duration
		follow  bool
	)
	c := &cobra.Command{
		Use:   "play <id>",
		Short: "Replay a recorded session in this terminal, in real time or faster",
		Long: `Replay a recorded session: its output is written to this terminal with
the pauses it had, divided by --speed, and no pause longer than
--max-idle. Markers (the recording reached its size cap, or a stream
could not be parsed) are shown on standard error.

On a terminal: space pauses and resumes, . skips the current pause,
q or Ctrl-C stops.

With --follow the session may still be running: what it recorded so far
is shown at once, then its output as it comes (a second or two behind),
until the session ends and its whole recording is stored.`,
		Example: `  clustral sessions play 1a2b3c4d5e6f-2k
  clustral sessions play 1a2b3c4d5e6f-2k --speed 4 --max-idle 1s
  clustral sessions play --follow 1a2b3c4d5e6f-2k`,
		Args: cobra.ExactArgs(1),
	}
	c.Flags().Float64Var(&speed, "speed", 1, "playback speed: 2 plays twice as fast")
	c.Flags().DurationVar(&maxIdle, "max-idle", 2*time.Second, "longest pause; 0 keeps every pause as recorded")
	c.Flags().BoolVarP(&follow, "follow", "f", false, "watch a running session: show its output as it comes, until it ends")
	c.RunE = func(c *cobra.Command, args []string) error {
		if speed <= 0 {
			return usageError{fmt.Errorf("--speed %v: give a positive speed, e.g. 1 or 2.5", speed)}
		}
		if maxIdle < 0 {
			return usageError{fmt.Errorf("--max-idle %v: give zero or a positive duration", maxIdle)}
		}
		if follow && c.Flags().Changed("speed") {
			return usageError{errors.New("--follow plays a running session as it comes, not at a --speed; give one of them")}
		}
		var (
			rc  io.ReadCloser
			err error
		)
		if follow {
			_, api, err := g.session()
			if err != nil {
				return err
			}
			rc = api.FollowRecording(c.Context(), args[0], followInterval)
			// The first answer shows whether there is anything to follow.
			if rc, err = peeked(rc); err != nil {
				return cliErr(err)
			}
			speed = math.Inf(1) // the pauses are the session's own
		} else if rc, err = openRecording(c.Context(), g, args[0]); err != nil {
			return err
		}
		defer rc.Close()
		keys, restore := playKeys(g.stdin, g.stderr)
		err = play(c.Context(), rc, g.stdout, g.stderr, speed, maxIdle, keys)
		restore()
		if errors.Is(err, errQuit) {
			return nil
		}
		return err
	}
	return c
}

// followInterval is how often play --follow asks for more of a running
// session; tests shorten it.
var followInterval = time.Second

// peeked reads the first byte of rc, so that a recording that cannot be
// read fails before the replay starts, and returns a reader that still
// gives it.
func peeked(rc io.ReadCloser) (io.ReadCloser, error) {
	br := bufio.NewReaderSize(rc, 64<<10)
	if _, err := br.Peek(1); err != nil {
		rc.Close()
		if errors.Is(err, io.EOF) {
			return nil, errors.New("the recording is empty")
		}
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{br, rc}, nil
}

// castEvent is one event line of an asciicast v2 recording.
type castEvent struct {
	at   float64 // seconds since the start
	code string
	data string
}

// parseCastEvent decodes one event line: [seconds, code, data].
func parseCastEvent(line []byte) (castEvent, error) {
	var raw []json.RawMessage
	var ev castEvent
	if err := json.Unmarshal(line, &raw); err != nil || len(raw) != 3 {
		return ev, errors.New("not an event [time, code, data]")
	}
	if err := json.Unmarshal(raw[0], &ev.at); err != nil || ev.at < 0 {
		return ev, errors.New("event time is not a non-negative number")
	}
	if json.Unmarshal(raw[1], &ev.code) != nil || json.Unmarshal(raw[2], &ev.data) != nil {
		return ev, errors.New("event code or data is not a string")
	}
	return ev, nil
}

// play replays the recording read from r: output events to out, with
// their pauses divided by speed and capped at maxIdle (if positive),
// markers to errw, under the control of keys (see pauseFor; nil: none).
// It stops at ctx's end, at errQuit, and at the first line that is not
// an event, naming it.
func play(ctx context.Context, r io.Reader, out, errw io.Writer, speed float64, maxIdle time.Duration, keys <-chan byte) error {
	br := bufio.NewReaderSize(r, 64<<10)
	head, err := br.ReadBytes('\n')
	if err != nil && len(head) == 0 {
		return errors.New("the recording is empty")
	}
	if _, err := proto.ParseRecordingHeader(head); err != nil {
		return fmt.Errorf("not a clustral recording: %w", err)
	}
	nl := "\n"
	if keys != nil {
		nl = "\r\n" // the terminal is raw
	}
	last := 0.0
	for n := 2; ; n++ {
		line, err := br.ReadBytes('\n')
		if len(strings.TrimSpace(string(line))) > 0 {
			ev, perr := parseCastEvent(line)
			if perr != nil {
				return fmt.Errorf("recording line %d: %w", n, perr)
			}
			wait := time.Duration((ev.at - last) / speed * float64(time.Second))
			if maxIdle > 0 {
				wait = min(wait, maxIdle)
			}
			if ev.at > last {
				last = ev.at
			}
			if wait > 0 {
				if err := pauseFor(ctx, wait, keys); err != nil {
					return err
				}
			}
			switch ev.code {
			case "o":
				if _, err := io.WriteString(out, ev.data); err != nil {
					return err
				}
			case "m":
				fmt.Fprintf(errw, "%s[%s at %s]%s", nl, ev.data, strconv.FormatFloat(ev.at, 'f', 1, 64)+"s", nl)
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read recording: %w", err)
		}
	}
}
