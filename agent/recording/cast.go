package recording

import (
	"bytes"
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
	// line is the event being encoded, by enc: its buffer is reused, so
	// an event costs no allocation of its size.
	line bytes.Buffer
	enc  *json.Encoder
}

func newCast(w io.Writer, max int64, start time.Time, now func() time.Time) *cast {
	c := &cast{w: w, h: sha256.New(), max: max, start: start, now: now}
	c.enc = json.NewEncoder(&c.line)
	// Terminal output is full of < > &: as themselves they take one
	// byte, escaped six. asciicast players read JSON, not HTML.
	c.enc.SetEscapeHTML(false)
	return c
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
	c.encodeEvent(code, string(data))
	if c.n+int64(c.line.Len()) > c.max-markerReserve {
		c.capped = true
		c.encodeEvent(codeMarker, fmt.Sprintf(
			"clustral: the recording reached its cap of %d bytes; the rest of the session was not recorded", c.max))
		if err := c.write(c.line.Bytes()); err != nil {
			return err
		}
		return errCapped
	}
	return c.write(c.line.Bytes())
}

// marker writes a marker event, unless the cap was reached.
func (c *cast) marker(text string) error {
	if c.capped {
		return errCapped
	}
	c.encodeEvent(codeMarker, text)
	return c.write(c.line.Bytes())
}

// encodeEvent puts the line of one event in c.line: [seconds, code, data].
func (c *cast) encodeEvent(code, data string) {
	t := max(c.now().Sub(c.start), 0)
	c.line.Reset()
	c.line.WriteByte('[')
	c.line.Write(strconv.AppendFloat(c.line.AvailableBuffer(), t.Seconds(), 'f', 6, 64))
	c.line.WriteString(`, "`)
	c.line.WriteString(code)
	c.line.WriteString(`", `)
	c.enc.Encode(data) // a string always encodes; Encode ends it with '\n'
	c.line.Truncate(c.line.Len() - 1)
	c.line.WriteString("]\n")
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
