package recording

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"strconv"
	"time"
	"unicode/utf8"
)

// Asciicast v2 event codes.
const (
	codeOutput = "o"
	codeInput  = "i"
	codeResize = "r"
	codeMarker = "m"
)

// markerReserve is room kept under the size cap for the marker that says
// the cap was reached.
const markerReserve = 256

// errCapped is returned by cast.event once the size cap was reached.
var errCapped = errors.New("recording size cap reached")

// cast writes an asciicast v2 stream to w: a header line, then one JSON
// array [seconds, code, data] per event, and hashes everything it writes.
// It is not safe for concurrent use; Session serializes it.
type cast struct {
	w     io.Writer
	h     hash.Hash
	n     int64 // bytes written
	max   int64
	start time.Time
	now   func() time.Time

	capped bool
	err    error // the first write error; sticky
	// carry holds the start of a UTF-8 sequence cut at the end of the
	// last output (0) or input (1) chunk, sent with the next one.
	carry [2][]byte
	line  []byte
}

func newCast(w io.Writer, max int64, start time.Time, now func() time.Time) *cast {
	return &cast{w: w, h: sha256.New(), max: max, start: start, now: now}
}

func (c *cast) write(b []byte) error {
	if c.err != nil {
		return c.err
	}
	if _, err := c.w.Write(b); err != nil {
		c.err = fmt.Errorf("write recording: %w", err)
		return c.err
	}
	c.h.Write(b)
	c.n += int64(len(b))
	return nil
}

// header writes the header line.
func (c *cast) header(h any) error {
	b, err := json.Marshal(h)
	if err != nil {
		return fmt.Errorf("encode recording header: %w", err)
	}
	return c.write(append(b, '\n'))
}

// event writes one event. Data of output and input events is cut before
// an incomplete UTF-8 sequence at its end, which goes with the next
// chunk: asciicast data is a JSON string. Invalid bytes become U+FFFD.
// Once the size cap is reached it writes one marker saying so and returns
// errCapped for every later event.
func (c *cast) event(code string, data []byte) error {
	if c.err != nil {
		return c.err
	}
	if c.capped {
		return errCapped
	}
	if i := carryIndex(code); i >= 0 {
		if len(c.carry[i]) > 0 {
			data = append(c.carry[i], data...)
			c.carry[i] = nil
		}
		if cut := incompleteTail(data); cut > 0 {
			c.carry[i] = append([]byte(nil), data[len(data)-cut:]...)
			data = data[:len(data)-cut]
		}
		if len(data) == 0 {
			return nil
		}
	}
	c.line = c.appendEvent(c.line[:0], code, string(data))
	if c.n+int64(len(c.line)) > c.max-markerReserve {
		c.capped = true
		c.line = c.appendEvent(c.line[:0], codeMarker, fmt.Sprintf(
			"clustral: the recording reached its cap of %d bytes; the rest of the session was not recorded", c.max))
		if err := c.write(c.line); err != nil {
			return err
		}
		return errCapped
	}
	return c.write(c.line)
}

// marker writes a marker event, unless the cap was reached.
func (c *cast) marker(text string) error {
	if c.capped {
		return errCapped
	}
	c.line = c.appendEvent(c.line[:0], codeMarker, text)
	return c.write(c.line)
}

func (c *cast) appendEvent(b []byte, code, data string) []byte {
	t := max(c.now().Sub(c.start), 0)
	b = append(b, '[')
	b = strconv.AppendFloat(b, t.Seconds(), 'f', 6, 64)
	b = append(b, `, "`...)
	b = append(b, code...)
	b = append(b, `", `...)
	s, _ := json.Marshal(data) // a string always encodes
	b = append(b, s...)
	return append(b, "]\n"...)
}

// sum returns the hex SHA-256 of everything written.
func (c *cast) sum() string { return fmt.Sprintf("%x", c.h.Sum(nil)) }

func carryIndex(code string) int {
	switch code {
	case codeOutput:
		return 0
	case codeInput:
		return 1
	}
	return -1
}

// incompleteTail returns how many bytes at the end of b are the start of
// a UTF-8 sequence that the next bytes may complete.
func incompleteTail(b []byte) int {
	for i := 1; i <= utf8.UTFMax-1 && i <= len(b); i++ {
		c := b[len(b)-i]
		if c < 0x80 {
			return 0 // ASCII: nothing pending
		}
		if utf8.RuneStart(c) {
			if utf8.FullRune(b[len(b)-i:]) {
				return 0
			}
			return i
		}
	}
	return 0
}
