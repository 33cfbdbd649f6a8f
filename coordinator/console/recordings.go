package console

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/url"
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

// recordingCast answers the recording itself: for the player, or, with
// ?download=1, as a file to save (what `clustral sessions export`
// writes).
func (c *Console) recordingCast(w http.ResponseWriter, r *http.Request, v *visit) {
	id := r.PathValue("id")
	rc, ok := c.openRecording(w, r, v, id)
	if !ok {
		return
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
