package cli

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/term"
)

// now is the CLI's clock; tests replace it to make output reproducible.
var now = time.Now

// colorEnabled reports whether w gets colour and animation: only on a
// terminal, and never with --no-color, NO_COLOR or TERM=dumb.
func colorEnabled(w io.Writer, noColor bool) bool {
	return !noColor && os.Getenv("NO_COLOR") == "" && os.Getenv("TERM") != "dumb" && isTerminal(w)
}

// style colours text with ANSI escapes when on, and returns it unchanged
// otherwise.
type style struct{ on bool }

func (s style) paint(code, text string) string {
	if !s.on {
		return text
	}
	return "\033[" + code + "m" + text + "\033[0m"
}

func (s style) red(t string) string    { return s.paint("31", t) }
func (s style) green(t string) string  { return s.paint("32", t) }
func (s style) yellow(t string) string { return s.paint("33", t) }
func (s style) dim(t string) string    { return s.paint("2", t) }

// style returns the colours for w under the global flags.
func (g *globals) style(w io.Writer) style { return style{on: colorEnabled(w, g.noColor)} }

// interactive reports whether a person is at the keyboard: stdin and
// stderr are both terminals.
func interactive(stdin io.Reader, stderr io.Writer) bool {
	f, ok := stdin.(*os.File)
	return ok && term.IsTerminal(int(f.Fd())) && isTerminal(stderr)
}

// confirm asks question on stderr and reads a yes/no answer from stdin.
// Anything but y or yes is no.
func confirm(stdin io.Reader, stderr io.Writer, question string) bool {
	fmt.Fprintf(stderr, "%s [y/N] ", question)
	line, _ := bufio.NewReader(stdin).ReadString('\n')
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return true
	}
	return false
}

// oneLine keeps an error on one line: the first line, trimmed.
func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// humanDuration renders d the way people say it: 45s, 12m, 7h59m, 2d3h.
func humanDuration(d time.Duration) string {
	if d < 0 {
		d = -d
	}
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 24*time.Hour:
		h, m := int(d.Hours()), int(d.Minutes())%60
		if m == 0 {
			return fmt.Sprintf("%dh", h)
		}
		return fmt.Sprintf("%dh%dm", h, m)
	default:
		days, h := int(d.Hours())/24, int(d.Hours())%24
		if h == 0 {
			return fmt.Sprintf("%dd", days)
		}
		return fmt.Sprintf("%dd%dh", days, h)
	}
}

// remaining says how long until t, or how long ago it passed.
func remaining(t time.Time) string {
	d := t.Sub(now())
	if d <= 0 {
		return "expired " + humanDuration(d) + " ago"
	}
	return humanDuration(d) + " left"
}
