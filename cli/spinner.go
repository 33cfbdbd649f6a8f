package main

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

func newSpinner(w io.Writer, msg string) *spinner {
	s := &spinner{w: w, msg: msg, done: make(chan struct{}), tty: isTerminal(w) && os.Getenv("NO_COLOR") == ""}
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
