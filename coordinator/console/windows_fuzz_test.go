package console

import (
	"fmt"
	"net/url"
	"reflect"
	"strconv"
	"testing"
)

// rowsForm is the form the role editor's window rows send back as
// shown (each row's inputs as typed, its ticked days and Remove).
func rowsForm(rows []windowRow) url.Values {
	f := url.Values{"windows": {strconv.Itoa(len(rows))}}
	for _, w := range rows {
		for _, d := range w.Days {
			if d.Checked {
				f.Add(fmt.Sprintf("window_days_%d", w.N), d.Day)
			}
		}
		f.Set(fmt.Sprintf("window_start_%d", w.N), w.Start)
		f.Set(fmt.Sprintf("window_end_%d", w.N), w.End)
		f.Set(fmt.Sprintf("window_tz_%d", w.N), w.TimeZone)
		if w.Remove {
			f.Set(fmt.Sprintf("window_remove_%d", w.N), "1")
		}
	}
	return f
}

// FuzzFormWindows: any posted role form (its body, URL-encoded) reads
// into at most maxWindowRows rows and an empty one to add a window, the
// windows sent are the rows not removed, and the rows shown again, as
// the form keeps them after a refusal, send the same windows.
func FuzzFormWindows(f *testing.F) {
	for _, s := range []string{
		"", "windows=1&window_days_0=mon&window_days_0=fri&window_start_0=09:00&window_end_0=18:00&window_tz_0=Europe/Berlin",
		"windows=3&window_start_0=22:00&window_end_0=06:00&window_remove_1=1&window_start_1=x&window_days_2=someday",
		"windows=-4", "windows=99999999999", "windows=2&window_start_1=%3Cscript%3E", "window_start_0=09:00",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		form, err := url.ParseQuery(body)
		if err != nil {
			return
		}
		rows, windows, sent := formWindows(form)
		if len(rows) == 0 || len(rows) > maxWindowRows+1 || !rows[len(rows)-1].New {
			t.Fatalf("%q: %d rows, want 1 to %d ending in the one to add", body, len(rows), maxWindowRows+1)
		}
		if len(windows) != len(sent) {
			t.Fatalf("%q: %d windows from %d rows", body, len(windows), len(sent))
		}
		for i, r := range sent {
			if r < 0 || r >= len(rows)-1 || rows[r].Remove || rows[r].Start != windows[i].Start || rows[r].End != windows[i].End || rows[r].TimeZone != windows[i].TimeZone {
				t.Fatalf("%q: window %d %+v comes from row %d %+v", body, i, windows[i], r, rows[min(max(r, 0), len(rows)-1)])
			}
		}
		_, again, _ := formWindows(rowsForm(rows))
		if !reflect.DeepEqual(again, windows) {
			t.Fatalf("%q: the rows shown again send %+v, not %+v", body, again, windows)
		}
	})
}
