package cli

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/term"
)

// spinner shows progress during a long wait, only on a terminal and only
// when colour/animation is not disabled. Otherwise it prints one line.
type spinner struct {
	w    io.Writer
	msg  string
	done chan struct{}
	wg   sync.WaitGroup
	tty  bool
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// spinner returns a spinner on stderr, animated only when colour is on.
func (g *globals) spinner(msg string) *spinner {
	return newSpinner(g.stderr, msg, colorEnabled(g.stderr, g.noColor))
}

// newSpinner starts a spinner on w; animate false prints msg once.
func newSpinner(w io.Writer, msg string, animate bool) *spinner {
	s := &spinner{w: w, msg: msg, done: make(chan struct{}), tty: animate}
	if !s.tty {
		fmt.Fprintln(w, msg+"...")
		return s
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		frames := `|/-\`
		t := time.NewTicker(120 * time.Millisecond)
		defer t.Stop()
		for i := 0; ; i++ {
			fmt.Fprintf(w, "\r%c %s", frames[i%len(frames)], msg)
			select {
			case <-s.done:
				fmt.Fprint(w, "\r\033[K")
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *spinner) stop() {
	select {
	case <-s.done:
	default:
		close(s.done)
	}
	s.wg.Wait()
}
