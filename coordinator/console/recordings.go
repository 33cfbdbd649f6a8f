package console

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/clustral/clustral/proto"
)

// The recorded sessions: a list with the filters of `clustral sessions
// ls`, a playback page per recording and its download. Who may see them
// is who the API lets list and read recordings (administrators).
//
// The player is console.js: it fetches the recording from the download
// route and renders its output events as text (never as markup), so a
// recording is shown exactly as the bytes the terminal received, less
// the escape sequences the player does not interpret.

// recordingFilters are the sessions page's filters: the API's names, and
// their labels and placeholders.
var recordingFilters = []filterField{
	{Name: proto.RecordingParamUser, Label: "User"},
	{Name: proto.RecordingParamCluster, Label: "Cluster"},
	{Name: proto.RecordingParamPod, Label: "Pod"},
	{Name: proto.RecordingParamSince, Label: "Since", Placeholder: "2h, 1d or RFC 3339"},
}

// filterField is one field of a page's filter form, with its value.
type filterField struct {
	Name, Label, Placeholder, Value string
}

type recordingsData struct {
	Fields     []filterField
	Recordings []proto.RecordingInfo
}

func (c *Console) recordingsPage(w http.ResponseWriter, r *http.Request, v *visit) {
	in := r.URL.Query()
	api := url.Values{}
	var fields []filterField
	for _, f := range recordingFilters {
		f.Value = strings.TrimSpace(in.Get(f.Name))
		if f.Value != "" {
			api.Set(f.Name, f.Value)
		}
		fields = append(fields, f)
	}
	d := c.page(r, v, "Recorded sessions")
	d.Data = recordingsData{Fields: fields}
	if s := api.Get(proto.RecordingParamSince); s != "" {
		t, err := sinceTime(s, time.Now())
		if err != nil {
			d.Error = err.Error()
			c.render(w, http.StatusBadRequest, "recordings", d)
			return
		}
		api.Set(proto.RecordingParamSince, t.UTC().Format(time.RFC3339))
	}
	var list []proto.RecordingInfo
	if err := apiCall(r, v, "GET", proto.APIVersion+"/recordings?"+api.Encode(), nil, &list); err != nil {
		c.failAPI(w, r, v, err)
		return
	}
	d.Data = recordingsData{Fields: fields, Recordings: list}
	c.render(w, http.StatusOK, "recordings", d)
}

// sinceTime reads the sessions page's since filter: a duration ago (30m,
// 2h, 1d) or an RFC 3339 time.
func sinceTime(s string, now time.Time) (time.Time, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		if d, err := time.ParseDuration(days + "h"); err == nil && d >= 0 {
			return now.Add(-24 * d), nil
		}
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("Since %q is neither a duration ago (30m, 2h, 1d) nor an RFC 3339 time (2026-01-02T15:04:05Z); correct it and show again.", s)
}

// Verification states of a recording on its playback page.
const (
	recordingVerified   = "verified"   // its bytes match the digest its end event carries
	recordingEdited     = "edited"     // they do not
	recordingUnvouched  = "unvouched"  // no end event carries its digest
	recordingUnreadable = "unreadable" // its header could not be read
)

type recordingData struct {
	ID       string
	Header   proto.RecordingHeader
	Bytes    int
	SHA256   string
	State    string
	Event    *proto.AuditEvent
	Cast     string
	Status   string
	Download string
	// Live: the session is running; the player follows it (Cast then
	// answers from ?offset=N, with the recording's state), and the
	// stored recording is verified at Stored once it ends.
	Live   bool
	Stored string
}

// recordingPage shows one recording with its player, its header and
// whether its stored bytes are those its end event vouches for: the
// check `clustral audit verify` makes of every recording.
func (c *Console) recordingPage(w http.ResponseWriter, r *http.Request, v *visit) {
	id := r.PathValue("id")
	rc, ok := c.openRecording(w, r, v, id)
	if !ok {
		return
	}
	rec, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		c.fail(w, r, v, http.StatusBadGateway, "Recording "+id+" could not be read: "+err.Error()+".")
		return
	}
	sum := sha256.Sum256(rec)
	rd := recordingData{ID: id, Bytes: len(rec), SHA256: hex.EncodeToString(sum[:]), State: recordingUnvouched,
		Cast: recordingPath(id) + "/cast", Download: recordingPath(id) + "/cast?download=1"}
	line, _, _ := bytes.Cut(rec, []byte("\n"))
	if rd.Header, err = proto.ParseRecordingHeader(line); err != nil {
		rd.State = recordingUnreadable
	}
	// The end event (RQ004I, or RQ005W for a rescued recording) carries
	// the digest; its correlation is the session id.
	var page proto.AuditPage
	q := url.Values{proto.AuditParamCorrelation: {id}, proto.AuditParamCode: {string(proto.AuditStreamEnded) + "," + string(proto.AuditRecordingRescued)},
		proto.AuditParamLimit: {"500"}}
	if err := apiCall(r, v, "GET", proto.APIVersion+"/audit/events?"+q.Encode(), nil, &page); err != nil {
		c.failAPI(w, r, v, err)
		return
	}
	for i, e := range page.Events {
		if (e.Code == proto.AuditStreamEnded || e.Code == proto.AuditRecordingRescued) && e.Metadata[proto.MetaRecording] == id && e.Metadata[proto.MetaRecordingSHA256] != "" {
			rd.Event = &page.Events[i]
			rd.Status = e.Metadata[proto.MetaRecordingStatus]
			if e.Metadata[proto.MetaRecordingSHA256] == rd.SHA256 {
				rd.State = recordingVerified
			} else {
				rd.State = recordingEdited
			}
			break
		}
	}
	d := c.page(r, v, "Recorded session "+id)
	d.Nav = "/admin/sessions"
	d.Data = rd
	c.render(w, http.StatusOK, "recording", d)
}

// recordingLivePage follows a running session: its player shows the
// recording as the agent ships it, about a second behind, until the
// session ends; then it links to the playback page, which verifies the
// stored recording. The live-sessions page links here
// (RecordingLivePath). A session that ended already goes straight to
// its playback page.
func (c *Console) recordingLivePage(w http.ResponseWriter, r *http.Request, v *visit) {
	id := r.PathValue("id")
	rc, more, err := v.api.OpenRecording(r.Context(), id, 0, true)
	if err != nil {
		c.failAPI(w, r, v, err)
		return
	}
	line, err := bufio.NewReaderSize(rc, 16<<10).ReadSlice('\n')
	rc.Close()
	if !more {
		http.Redirect(w, r, recordingPath(id), http.StatusSeeOther)
		return
	}
	rd := recordingData{ID: id, State: recordingUnvouched, Live: true, Cast: recordingPath(id) + "/cast?live=1", Stored: recordingPath(id)}
	if err == nil {
		rd.Header, err = proto.ParseRecordingHeader(line)
	}
	if err != nil {
		rd.State = recordingUnreadable
	}
	d := c.page(r, v, "Live session "+id)
	d.Nav = "/admin/sessions"
	d.Data = rd
	c.render(w, http.StatusOK, "recording", d)
}

// RecordingLivePath is the page that follows the running session id
// while it runs (and then leads to its recording).
func RecordingLivePath(id string) string { return recordingPath(id) + "/live" }

// recordingCast answers the recording itself: for the player, or, with
// ?download=1, as a file to save (what `clustral sessions export`
// writes). With ?live=1 it answers a running session's recording too,
// from ?offset=N, and says in HeaderRecordingState whether more may
// follow: the live player asks again from where the answer ended.
func (c *Console) recordingCast(w http.ResponseWriter, r *http.Request, v *visit) {
	id := r.PathValue("id")
	q := r.URL.Query()
	var rc io.ReadCloser
	if q.Get("live") != "" {
		off, err := strconv.ParseInt(q.Get("offset"), 10, 64)
		if q.Get("offset") == "" {
			off, err = 0, nil
		}
		if err != nil || off < 0 {
			c.fail(w, r, v, http.StatusBadRequest, fmt.Sprintf("Offset %q is not a byte offset.", q.Get("offset")))
			return
		}
		var more bool
		if rc, more, err = v.api.OpenRecording(r.Context(), id, off, true); err != nil {
			c.failAPI(w, r, v, err)
			return
		}
		state := proto.RecordingStateStored
		if more {
			state = proto.RecordingStateLive
		}
		w.Header().Set(proto.HeaderRecordingState, state)
		w.Header().Set("Cache-Control", "no-store")
	} else {
		var ok bool
		if rc, ok = c.openRecording(w, r, v, id); !ok {
			return
		}
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "application/x-asciicast")
	if r.URL.Query().Get("download") != "" {
		// The id is letters, digits, '.', '_' and '-' (the API refused
		// any other), so it needs no quoting.
		w.Header().Set("Content-Disposition", `attachment; filename="`+id+`.cast"`)
	}
	io.Copy(w, rc)
}

// openRecording opens the recording id through the API; the caller
// closes it. If the API refuses, it shows the refusal and returns false.
func (c *Console) openRecording(w http.ResponseWriter, r *http.Request, v *visit, id string) (io.ReadCloser, bool) {
	rc, err := v.api.Open(r.Context(), proto.APIVersion+"/recordings/"+url.PathEscape(id), nil)
	if err != nil {
		c.failAPI(w, r, v, err)
		return nil, false
	}
	return rc, true
}

// recordingPath is the playback page of the recording id.
func recordingPath(id string) string { return "/admin/sessions/" + url.PathEscape(id) }
