package cvatfake_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/cvat-sync/cvat-sync/internal/cvatfake"
)

// answer is one raw exchange with the fake.
type answer struct {
	status int
	header http.Header
	body   string
}

// do sends one request; auth is the whole Authorization header ("" none).
func do(t *testing.T, f *cvatfake.Server, method, pathQuery, auth string, hdr ...string) answer {
	t.Helper()
	u := pathQuery
	if !strings.HasPrefix(u, "http") {
		u = f.URL() + pathQuery
	}
	req, _ := http.NewRequest(method, u, nil)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := f.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, resp.Header, string(b)}
}

// short describes an answer for the table: status, then the body as CVAT
// shapes it (empty, JSON, or Django's text/html).
func (a answer) short(ids ...int64) string {
	body := a.body
	for _, id := range ids {
		body = strings.ReplaceAll(body, fmt.Sprint(id), "N")
	}
	ct := a.header.Get("Content-Type")
	switch {
	case body == "":
		return fmt.Sprintf("%d empty", a.status)
	case strings.HasPrefix(ct, "text/html") && strings.HasPrefix(strings.TrimSpace(body), "<"):
		return fmt.Sprintf("%d django-html", a.status)
	case strings.HasPrefix(ct, "text/html"):
		return fmt.Sprintf("%d text %s", a.status, firstLine(body))
	}
	return fmt.Sprintf("%d %s", a.status, body)
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// keys lists a JSON object's keys in their order.
func keys(t *testing.T, raw json.RawMessage) string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("not an object: %s", raw)
	}
	var out []string
	for dec.More() {
		k, _ := dec.Token()
		out = append(out, k.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Fatal(err)
		}
	}
	return strings.Join(out, ",")
}

// profile is what a client meets on one release, probed over HTTP.
type profile struct {
	AboutAnonymous  int    // GET /api/server/about without credentials
	Bearer          int    // GET /api/tasks/{id} with Bearer
	TokenSetsCookie bool   // a Token request without a session answers Set-Cookie
	ProjectIDFilter bool   // GET /api/tasks?project_id= filters
	Legacy          string // the legacy GET's answers: enqueue, first poll
	LegacyTwice     string // the legacy download, then the same download again
	LegacyCloud     string // legacy export of a task whose target storage is a bucket, default parameters
	NoData          string // legacy GET of a task without data
	Post            string // POST .../dataset/export
	Conflict        string // the same POST again while the first is queued
	RqID            string
	Operation       string // the request status' operation keys
	ResultURL       string // path and query
	Downloads       string // result_url fetched twice
	UnknownRequest  string // GET /api/requests/<unknown>
}

func probe(t *testing.T, version string) profile {
	f := cvatfake.New(t, cvatfake.Options{Version: version})
	token := "Token " + f.Token()
	pr := f.AddProject(cvatfake.Project{Name: "p"})
	task := f.AddTask(cvatfake.Task{Name: "t", ProjectID: pr.ID})
	f.AddTask(cvatfake.Task{Name: "elsewhere"})
	var p profile
	p.AboutAnonymous = do(t, f, "GET", "/api/server/about", "").status
	p.Bearer = do(t, f, "GET", "/api/tasks/"+itoa(task.ID), "Bearer "+f.Token()).status
	p.TokenSetsCookie = do(t, f, "GET", "/api/tasks/"+itoa(task.ID), token).header.Get("Set-Cookie") != ""
	var list struct{ Count int }
	_ = json.Unmarshal([]byte(do(t, f, "GET", "/api/tasks?project_id="+itoa(pr.ID), token).body), &list)
	p.ProjectIDFilter = list.Count == 1

	// The legacy flow: enqueue, poll, ..., 201, download, download again.
	legacy := f.AddTask(cvatfake.Task{Name: "legacy", ProjectID: pr.ID})
	lq := "/api/tasks/" + itoa(legacy.ID) + "/annotations?format=COCO+1.0&use_default_location=false&location=local"
	var seq []string
	for range 2 {
		seq = append(seq, do(t, f, "GET", lq, token).short(legacy.ID))
	}
	p.Legacy = strings.Join(seq, " | ")
	if !strings.HasPrefix(p.Legacy, "410") {
		for i := 0; i < 5 && do(t, f, "GET", lq, token).status != http.StatusCreated; i++ {
		}
		first := do(t, f, "GET", lq+"&action=download", token)
		p.LegacyTwice = fmt.Sprintf("%d %d bytes | %s", first.status, len(first.body), do(t, f, "GET", lq+"&action=download", token).short(legacy.ID))

		cloud := f.AddTask(cvatfake.Task{Name: "cloud", ProjectID: pr.ID, TargetCloudStorageID: 3})
		cq := "/api/tasks/" + itoa(cloud.ID) + "/annotations?format=COCO+1.0"
		var polls []string
		for i := 0; i < 6; i++ {
			a := do(t, f, "GET", cq, token)
			if a.status == http.StatusAccepted {
				continue
			}
			polls = append(polls, a.short(cloud.ID))
			if a.status == http.StatusCreated {
				a = do(t, f, "GET", cq+"&action=download", token)
				polls = append(polls, "download "+a.short(cloud.ID))
			}
			break
		}
		p.LegacyCloud = strings.Join(polls, " | ")
	}
	empty := f.AddTask(cvatfake.Task{Name: "empty", ProjectID: pr.ID, NoData: true})
	p.NoData = do(t, f, "GET", "/api/tasks/"+itoa(empty.ID)+"/annotations?format=COCO+1.0", token).short()

	// The request API.
	pq := "/api/tasks/" + itoa(task.ID) + "/dataset/export?format=COCO+1.0&save_images=false&location=local"
	post := do(t, f, "POST", pq, token)
	p.Post = post.short(task.ID)
	p.UnknownRequest = do(t, f, "GET", "/api/requests/nope", token).short()
	if post.status != http.StatusAccepted {
		return p
	}
	p.Conflict = do(t, f, "POST", pq, token).short(task.ID)
	var rq struct {
		RqID string `json:"rq_id"`
	}
	_ = json.Unmarshal([]byte(post.body), &rq)
	p.RqID = strings.ReplaceAll(rq.RqID, itoa(task.ID), "N")
	var st struct {
		Status    string          `json:"status"`
		Operation json.RawMessage `json:"operation"`
		ResultURL *string         `json:"result_url"`
	}
	for i := 0; i < 5 && st.Status != "finished"; i++ {
		st.Status = ""
		_ = json.Unmarshal([]byte(do(t, f, "GET", "/api/requests/"+url.PathEscape(rq.RqID), token).body), &st)
	}
	p.Operation = keys(t, st.Operation)
	if st.ResultURL == nil {
		t.Fatalf("no result_url: %+v", st)
	}
	ru := strings.TrimPrefix(*st.ResultURL, f.URL())
	p.ResultURL = strings.ReplaceAll(ru, itoa(task.ID), "N")
	var dl []string
	for range 2 {
		a := do(t, f, "GET", ru, token)
		if a.status == http.StatusOK {
			dl = append(dl, "200 "+a.header.Get("Content-Type"))
		} else {
			dl = append(dl, a.short(task.ID))
		}
	}
	p.Downloads = strings.Join(dl, " | ")
	return p
}

// TestReleaseProfiles pins what the fake answers on each release, from
// CVAT's source at the release commits (see VERSIONS.md Part 2, with the
// corrections in the fake's comments).
func TestReleaseProfiles(t *testing.T) {
	const (
		empty202     = "202 empty"
		rq202        = `202 {"rq_id":"export:task-N-annotations-in-COCO_1@0-format-by-10"}`
		noRoute      = "404 django-html"
		oldRqID      = "export:task-N-annotations-in-COCO_1@0-format-by-10"
		newRqID      = "action=export&target=task&target_id=N&user_id=10&format=COCO_1~0&subresource=annotations"
		ops          = "type,target,project_id,task_id,job_id,format"
		legacyResult = "/api/tasks/N/annotations?format=COCO+1.0&save_images=false&location=local&action=download"
		zip          = "200 application/zip"
		noDataJSON   = `400 "Exporting annotations from a task without data is not allowed"`
		noDataText   = "400 text Exporting annotations from a task without data is not allowed"
		gone         = "410 text This endpoint is no longer supported."
		unknown1619  = "404 text There is no request with specified id: nope"
		unknown      = "404 text There is no request with specified id"
		once17       = "400 text Unknown export request id. Please request export first by sending a request without the action=download parameter."
	)
	legacyOld := profile{AboutAnonymous: 200, Bearer: 401, TokenSetsCookie: true, ProjectIDFilter: true,
		Legacy: empty202 + " | " + empty202, LegacyTwice: "200 4096 bytes | " + empty202,
		LegacyCloud: "201 empty | download 200 empty", NoData: noDataJSON, Post: noRoute, UnknownRequest: noRoute}
	with := func(p profile, mod func(*profile)) profile { mod(&p); return p }
	v216 := profile{AboutAnonymous: 200, Bearer: 401, TokenSetsCookie: true, ProjectIDFilter: true,
		Legacy: rq202 + " | " + empty202, LegacyTwice: "200 4096 bytes | " + rq202, LegacyCloud: "200 empty", NoData: noDataText,
		Post: rq202, Conflict: `409 "Export process is already queued"`, RqID: oldRqID, Operation: ops,
		ResultURL: legacyResult, Downloads: zip + " | " + rq202, UnknownRequest: unknown1619}
	v217 := with(v216, func(p *profile) {
		p.TokenSetsCookie = false
		p.Legacy = rq202 + " | " + rq202
		p.LegacyTwice = "200 4096 bytes | " + once17
		p.Conflict = `409 "Export request is being processed"`
		p.Operation = ops + ",function_id"
		p.Downloads = zip + " | " + once17
	})
	v232 := with(v217, func(p *profile) {
		p.Legacy, p.LegacyTwice, p.LegacyCloud = gone+" | "+gone, "", ""
		p.Operation = ops
		p.ResultURL = "/api/tasks/N/dataset/download?rq_id=export%3Atask-N-annotations-in-COCO_1%400-format-by-10"
		p.Downloads = zip + " | " + zip
		p.UnknownRequest = unknown
	})
	v237 := with(v232, func(p *profile) {
		p.Conflict = `409 {"rq_id":"export:task-N-annotations-in-COCO_1@0-format-by-10"}`
	})
	v238 := with(v237, func(p *profile) {
		p.Post = `202 {"rq_id":"` + newRqID + `"}`
		p.Conflict = `409 {"rq_id":"` + newRqID + `"}`
		p.RqID = newRqID
		p.ResultURL = "/api/tasks/N/dataset/download?rq_id=action%3Dexport%26target%3Dtask%26target_id%3DN%26user_id%3D10%26format%3DCOCO_1~0%26subresource%3Dannotations"
	})
	v248 := with(v238, func(p *profile) { p.Bearer = 200; p.Operation = ops + ",lightweight" })
	tests := map[string]profile{
		"2.3.0":  with(legacyOld, func(p *profile) { p.ProjectIDFilter = false }),
		"2.4.0":  legacyOld,
		"2.10.0": legacyOld,
		"2.10.1": with(legacyOld, func(p *profile) { p.LegacyCloud = "200 empty" }),
		"2.14.3": with(legacyOld, func(p *profile) {
			p.LegacyCloud = "200 empty"
			p.LegacyTwice = `200 4096 bytes | 400 "Export has not finished"`
		}),
		"2.15.0": with(legacyOld, func(p *profile) {
			p.LegacyCloud = "200 empty"
			p.LegacyTwice = `200 4096 bytes | 400 "Export has not finished"`
		}),
		"2.16.0": v216,
		"2.17.0": v217,
		"2.31.0": with(v217, func(p *profile) { p.Operation = ops; p.UnknownRequest = unknown }),
		"2.32.0": v232,
		"2.37.0": v237,
		"2.38.0": v238,
		"2.48.0": v248,
		"2.64.0": v248,
		"2.73.0": with(v248, func(p *profile) { p.Operation = "type,target,project_id,task_id,job_id,org_id,format,lightweight" }),
	}
	for version, want := range tests {
		t.Run(version, func(t *testing.T) {
			if diff := cmp.Diff(want, probe(t, version)); diff != "" {
				t.Errorf("CVAT %s (-want +got):\n%s", version, diff)
			}
		})
	}
}

// Absolute URLs come from the request as Django builds them: the host from
// X-Forwarded-Host (else Host), https only from X-Forwarded-Proto.
func TestAbsoluteURLsFromForwardedHeaders(t *testing.T) {
	for _, version := range []string{"2.20.0", "2.64.0"} {
		t.Run(version, func(t *testing.T) {
			f := cvatfake.New(t, cvatfake.Options{Version: version, ExportPolls: -1})
			token := "Token " + f.Token()
			p := f.AddProject(cvatfake.Project{Name: "p"})
			task := f.AddTask(cvatfake.Task{Name: "t", ProjectID: p.ID})
			f.AddTask(cvatfake.Task{Name: "t2", ProjectID: p.ID})
			fwd := []string{"X-Forwarded-Proto", "https", "X-Forwarded-Host", "cvat.example.com"}
			var page struct{ Next string }
			_ = json.Unmarshal([]byte(do(t, f, "GET", "/api/tasks?page_size=1", token, fwd...).body), &page)
			if !strings.HasPrefix(page.Next, "https://cvat.example.com/api/tasks?") {
				t.Errorf("next = %q", page.Next)
			}
			var rq struct {
				RqID string `json:"rq_id"`
			}
			_ = json.Unmarshal([]byte(do(t, f, "POST", "/api/tasks/"+itoa(task.ID)+"/dataset/export?format=COCO+1.0&location=local", token, fwd...).body), &rq)
			var st struct {
				ResultURL string `json:"result_url"`
			}
			// The poll comes without the headers: result_url is what the POST saw.
			_ = json.Unmarshal([]byte(do(t, f, "GET", "/api/requests/"+url.PathEscape(rq.RqID), token).body), &st)
			if !strings.HasPrefix(st.ResultURL, "https://cvat.example.com/api/tasks/"+itoa(task.ID)+"/") {
				t.Errorf("result_url = %q", st.ResultURL)
			}
			// Only "https" counts; the Host header without forwarding.
			_ = json.Unmarshal([]byte(do(t, f, "GET", "/api/tasks?page_size=1", token, "X-Forwarded-Proto", "wss").body), &page)
			if !strings.HasPrefix(page.Next, f.URL()+"/api/tasks?") {
				t.Errorf("next = %q, want %s", page.Next, f.URL())
			}
		})
	}
}

// The test controls the pipeline's tests use.
func TestControls(t *testing.T) {
	now := time.Date(2026, 5, 4, 12, 0, 0, 0, time.UTC)
	f := cvatfake.New(t, cvatfake.Options{Now: func() time.Time { return now }, ExportPolls: -1})
	token := "Token " + f.Token()
	p := f.AddProject(cvatfake.Project{Name: "p"})
	task := f.AddTask(cvatfake.Task{Name: "t", ProjectID: p.ID})

	t.Run("Date from the clock, with its offset", func(t *testing.T) {
		f.SetClockOffset(-10 * time.Minute)
		defer f.SetClockOffset(0)
		got := do(t, f, "GET", "/api/server/about", "").header.Get("Date")
		if want := now.Add(-10 * time.Minute).Format(http.TimeFormat); got != want {
			t.Errorf("Date = %q, want %q", got, want)
		}
		behind := cvatfake.New(t, cvatfake.Options{Now: func() time.Time { return now }})
		behind.SetClockOffset(-10 * time.Minute)
		if got := behind.AddTask(cvatfake.Task{Name: "t"}).UpdatedDate; !got.Equal(now.Add(-10 * time.Minute)) {
			t.Errorf("a new task's updated_date = %v; want CVAT's clock", got)
		}
	})
	t.Run("hidden task", func(t *testing.T) {
		f.HideTask(task.ID, true)
		defer f.HideTask(task.ID, false)
		if a := do(t, f, "GET", "/api/tasks/"+itoa(task.ID), token); a.status != 403 || !strings.Contains(a.body, "You do not have permission") {
			t.Errorf("read = %s", a.short())
		}
		if a := do(t, f, "POST", "/api/tasks/"+itoa(task.ID)+"/dataset/export?format=COCO+1.0", token); a.status != 403 {
			t.Errorf("export = %s", a.short())
		}
		if a := do(t, f, "GET", "/api/tasks", token); strings.Contains(a.body, `"id":`+itoa(task.ID)+`,`) {
			t.Error("listed")
		}
	})
	t.Run("every export fails until cleared", func(t *testing.T) {
		f.FailExports(task.ID, "disk full")
		for range 2 {
			if st := exportStatus(t, f, task.ID); st != "failed" {
				t.Errorf("status %s, want failed", st)
			}
		}
		f.FailExports(task.ID, "")
		if st := exportStatus(t, f, task.ID); st != "finished" {
			t.Errorf("status %s after clearing, want finished", st)
		}
	})
	t.Run("fault on one page, with a content type", func(t *testing.T) {
		f.Inject(cvatfake.Fault{Route: "/api/tasks", Query: url.Values{"page": {"2"}}, Status: 404, ContentType: "text/html", Body: "<html>nginx</html>"})
		defer f.ClearFaults()
		if a := do(t, f, "GET", "/api/tasks?page=1", token); a.status != 200 {
			t.Errorf("page 1 = %d", a.status)
		}
		if a := do(t, f, "GET", "/api/tasks?page=2&page_size=1", token); a.status != 404 || a.header.Get("Content-Type") != "text/html" || a.body != "<html>nginx</html>" {
			t.Errorf("page 2 = %s", a.short())
		}
	})
	t.Run("version change", func(t *testing.T) {
		if err := f.SetVersion("2.15.0"); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = f.SetVersion(cvatfake.DefaultVersion) }()
		if a := do(t, f, "POST", "/api/tasks/"+itoa(task.ID)+"/dataset/export?format=COCO+1.0", token); a.short() != "404 django-html" {
			t.Errorf("POST on 2.15 = %s", a.short())
		}
		var about struct{ Version string }
		_ = json.Unmarshal([]byte(do(t, f, "GET", "/api/server/about", "").body), &about)
		if about.Version != "2.15.0" || f.Version() != "2.15.0" {
			t.Errorf("about says %q", about.Version)
		}
	})
	t.Run("sessions and CSRF", func(t *testing.T) {
		if err := f.SetVersion("2.16.0"); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = f.SetVersion(cvatfake.DefaultVersion) }()
		before := f.Sessions()
		a := do(t, f, "GET", "/api/tasks/"+itoa(task.ID), token)
		var session string
		for _, c := range (&http.Response{Header: a.header}).Cookies() {
			if c.Name == "sessionid" {
				session = c.Name + "=" + c.Value
			}
		}
		if session == "" || f.Sessions() != before+1 {
			t.Fatalf("no session from a Token login: %v", a.header)
		}
		if a := do(t, f, "GET", "/api/tasks/"+itoa(task.ID), token, "Cookie", session); a.header.Get("Set-Cookie") != "" || f.Sessions() != before+1 {
			t.Error("a request with the session cookie made another session")
		}
		if a := do(t, f, "GET", "/api/tasks/"+itoa(task.ID), "", "Cookie", session); a.status != 200 {
			t.Errorf("GET with the session alone = %d", a.status)
		}
		if a := do(t, f, "POST", "/api/tasks/"+itoa(task.ID)+"/dataset/export?format=COCO+1.0", "", "Cookie", session); a.status != 403 || !strings.Contains(a.body, "CSRF") {
			t.Errorf("POST with the session alone = %s; want CSRF's 403", a.short())
		}
		if a := do(t, f, "POST", "/api/tasks/"+itoa(task.ID)+"/dataset/export?format=COCO+1.0", token, "Cookie", session); a.status != 202 {
			t.Errorf("POST with the token and the session = %s; the token comes first", a.short())
		}
	})
}

// exportStatus runs one export through the request API and returns its end
// status.
func exportStatus(t *testing.T, f *cvatfake.Server, id int64) string {
	t.Helper()
	token := "Token " + f.Token()
	var rq struct {
		RqID string `json:"rq_id"`
	}
	_ = json.Unmarshal([]byte(do(t, f, "POST", "/api/tasks/"+itoa(id)+"/dataset/export?format=COCO+1.0", token).body), &rq)
	var st struct{ Status string }
	_ = json.Unmarshal([]byte(do(t, f, "GET", "/api/requests/"+url.PathEscape(rq.RqID), token).body), &st)
	return st.Status
}

// An export holds the task's state when its job starts: a save while it is
// queued is in the archive, a save after it started is not (then 2.16.x's
// download re-enqueues, 2.17+ hand out the older state).
func TestExportSnapshotAtJobStart(t *testing.T) {
	for _, version := range []string{"2.16.0", "2.20.0", "2.64.0"} {
		t.Run(version, func(t *testing.T) {
			f := cvatfake.New(t, cvatfake.Options{Version: version})
			token := "Token " + f.Token()
			p := f.AddProject(cvatfake.Project{Name: "p"})
			task := f.AddTask(cvatfake.Task{Name: "t", ProjectID: p.ID})
			// run requests an export, lets between() happen, drives the job
			// to its end and downloads result_url.
			run := func(between func()) answer {
				t.Helper()
				var rq struct {
					RqID string `json:"rq_id"`
				}
				_ = json.Unmarshal([]byte(do(t, f, "POST", "/api/tasks/"+itoa(task.ID)+"/dataset/export?format=COCO+1.0&location=local", token).body), &rq)
				between()
				var st struct {
					Status    string  `json:"status"`
					ResultURL *string `json:"result_url"`
				}
				for i := 0; i < 5 && st.Status != "finished"; i++ {
					_ = json.Unmarshal([]byte(do(t, f, "GET", "/api/requests/"+url.PathEscape(rq.RqID), token).body), &st)
				}
				if st.ResultURL == nil {
					t.Fatalf("status %q without result_url", st.Status)
				}
				return do(t, f, "GET", *st.ResultURL, token)
			}
			stamp := func() string {
				cur, _ := f.Task(task.ID)
				return "updated=" + cur.UpdatedDate.UTC().Format("2006-01-02T15:04:05.000000Z")
			}
			touch := func() {
				if _, err := f.TouchTask(task.ID); err != nil {
					t.Fatal(err)
				}
			}

			a := run(touch) // saved while queued
			switch {
			case version == "2.16.0": // the download checks request time < updated_date
				if a.status != http.StatusAccepted || !strings.Contains(a.body, "rq_id") {
					t.Errorf("2.16 download after a change = %s, want 202 {rq_id}", a.short())
				}
				f.ExpireExports(task.ID)
			case a.status != 200 || !strings.Contains(firstLine(a.body), stamp()):
				t.Errorf("saved while queued: %d %q, want the new state (%s)", a.status, firstLine(a.body), stamp())
			}

			before := stamp()
			a = run(func() { f.StartExports(); touch() }) // saved while running
			switch {
			case version == "2.16.0":
				if a.status != http.StatusAccepted || !strings.Contains(a.body, "rq_id") {
					t.Errorf("2.16 download after a change = %s, want 202 {rq_id}", a.short())
				}
			case a.status != 200 || !strings.Contains(firstLine(a.body), before):
				t.Errorf("saved while running: %d %q, want the state when the job started (%s)", a.status, firstLine(a.body), before)
			}
		})
	}
}
