package cvatfake

import (
	"fmt"
	"slices"
	"time"
)

// Project is a CVAT project in the fake.
type Project struct {
	ID          int64 // 0: assigned
	Name        string
	Org         string // organization slug; "" = personal sandbox
	Status      string // default "annotation"
	CreatedDate time.Time
	UpdatedDate time.Time
}

// Task is a CVAT task in the fake.
type Task struct {
	ID          int64 // 0: assigned
	Name        string
	ProjectID   int64  // 0: no project
	Org         string // default: the project's organization
	Status      string // annotation (default) | validation | completed
	Mode        string // default "annotation"
	Size        int64  // frames; default 10
	Subset      string
	CreatedDate time.Time
	UpdatedDate time.Time
	ArchiveSize int64 // bytes of its export archives; default Options.ArchiveSize

	TargetCloudStorageID int64 // non-zero: the task's target storage is this cloud storage (exports go there unless the request says local)
	NoData               bool  // no data attached: "data" is null, size 0, exports fail as CVAT's do
}

// Job is a CVAT job in the fake.
type Job struct {
	ID          int64 // 0: assigned
	TaskID      int64
	Stage       string // annotation (default) | validation | acceptance
	State       string // new (default) | in progress | rejected | completed
	Type        string // default "annotation"
	CreatedDate time.Time
	UpdatedDate time.Time
}

// id hands out the next unused id (one sequence for every kind keeps ids
// distinct in test output).
func (s *Server) id() int64 {
	for {
		s.nextID++
		_, p := s.projects[s.nextID]
		_, t := s.tasks[s.nextID]
		_, j := s.jobs[s.nextID]
		if !p && !t && !j {
			return s.nextID
		}
	}
}

func (s *Server) org(slug string) {
	if slug != "" && s.orgs[slug] == 0 {
		s.orgs[slug] = int64(len(s.orgs) + 1)
	}
}

func (s *Server) dates(created, updated *time.Time) {
	if created.IsZero() {
		*created = s.now()
	}
	*created = created.UTC().Truncate(time.Microsecond)
	if updated.IsZero() {
		*updated = *created
	}
	*updated = updated.UTC().Truncate(time.Microsecond)
	if updated.After(s.lastTime) {
		s.lastTime = *updated
	}
}

// AddProject stores p (assigning an ID and dates when zero) and returns it.
func (s *Server) AddProject(p Project) Project {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p.ID == 0 {
		p.ID = s.id()
	}
	if p.Status == "" {
		p.Status = "annotation"
	}
	s.org(p.Org)
	s.dates(&p.CreatedDate, &p.UpdatedDate)
	s.projects[p.ID] = &p
	return p
}

// AddTask stores t and returns it. It panics if t.ProjectID names no project:
// that is a bug in the test.
func (s *Server) AddTask(t Task) Task {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t.ID == 0 {
		t.ID = s.id()
	}
	if t.ProjectID != 0 {
		p, ok := s.projects[t.ProjectID]
		if !ok {
			panic(fmt.Sprintf("cvatfake: AddTask: no project %d", t.ProjectID))
		}
		if t.Org == "" {
			t.Org = p.Org
		}
	}
	if t.Status == "" {
		t.Status = "annotation"
	}
	if t.Mode == "" {
		t.Mode = "annotation"
	}
	if t.Size == 0 {
		t.Size = 10
	}
	s.org(t.Org)
	s.dates(&t.CreatedDate, &t.UpdatedDate)
	s.tasks[t.ID] = &t
	return t
}

// AddJob stores j and returns it. It panics if j.TaskID names no task.
func (s *Server) AddJob(j Job) Job {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.tasks[j.TaskID]; !ok {
		panic(fmt.Sprintf("cvatfake: AddJob: no task %d", j.TaskID))
	}
	if j.ID == 0 {
		j.ID = s.id()
	}
	if j.Stage == "" {
		j.Stage = "annotation"
	}
	if j.State == "" {
		j.State = "new"
	}
	if j.Type == "" {
		j.Type = "annotation"
	}
	s.dates(&j.CreatedDate, &j.UpdatedDate)
	s.jobs[j.ID] = &j
	return j
}

// Task returns the stored task.
func (s *Server) Task(id int64) (Task, bool) { return get(s, s.tasks, id) }

// Job returns the stored job.
func (s *Server) Job(id int64) (Job, bool) { return get(s, s.jobs, id) }

// Project returns the stored project.
func (s *Server) Project(id int64) (Project, bool) { return get(s, s.projects, id) }

func get[T any](s *Server, m map[int64]*T, id int64) (T, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := m[id]
	if !ok {
		var zero T
		return zero, false
	}
	return *v, true
}

// TouchTask bumps the task's updated_date as any save does and returns the
// update:task event CVAT would send.
func (s *Server) TouchTask(id int64) (Event, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tasks[id]
	if !ok {
		return Event{}, fmt.Errorf("cvatfake: no task %d", id)
	}
	old := t.UpdatedDate
	t.UpdatedDate = s.now()
	return s.updateEvent("task", t.ProjectID, t.Org, s.taskJSON(t, s.publicBase(), false),
		ordered{{"updated_date", cvatTime(old)}}), nil
}

// SaveAnnotations does what an annotation save in job jobID does in CVAT
// 2.64.0: it touches the job, its task and its project, and returns the
// update:job, update:task and update:project events, in that order (no
// update:project for a task outside any project).
func (s *Server) SaveAnnotations(jobID int64) ([]Event, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j, ok := s.jobs[jobID]
	if !ok {
		return nil, fmt.Errorf("cvatfake: no job %d", jobID)
	}
	t := s.tasks[j.TaskID]
	base := s.publicBase()
	var evs []Event
	old := j.UpdatedDate
	j.UpdatedDate = s.now()
	evs = append(evs, s.updateEvent("job", t.ProjectID, t.Org, s.jobJSON(j, base, false), ordered{{"updated_date", cvatTime(old)}}))
	old = t.UpdatedDate
	t.UpdatedDate = s.now()
	evs = append(evs, s.updateEvent("task", t.ProjectID, t.Org, s.taskJSON(t, base, false), ordered{{"updated_date", cvatTime(old)}}))
	if p, ok := s.projects[t.ProjectID]; ok {
		old = p.UpdatedDate
		p.UpdatedDate = s.now()
		evs = append(evs, s.updateEvent("project", p.ID, p.Org, s.projectJSON(p, base), ordered{{"updated_date", cvatTime(old)}}))
	}
	return evs, nil
}

// CompleteJob does what PATCH /api/jobs/{id} {"stage": "acceptance",
// "state": "completed"} does: it returns update:job, and, when every job of
// the task is now completed, update:task with before_update.status (the
// task's status becomes "completed").
func (s *Server) CompleteJob(jobID int64) ([]Event, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j, ok := s.jobs[jobID]
	if !ok {
		return nil, fmt.Errorf("cvatfake: no job %d", jobID)
	}
	t := s.tasks[j.TaskID]
	base := s.publicBase()
	before := ordered{}
	if j.Stage != "acceptance" {
		before = append(before, pair{"status", j.Stage}, pair{"stage", j.Stage})
	}
	if j.State != "completed" {
		before = append(before, pair{"state", j.State})
	}
	before = append(before, pair{"updated_date", cvatTime(j.UpdatedDate)})
	j.Stage, j.State = "acceptance", "completed"
	j.UpdatedDate = s.now()
	evs := []Event{s.updateEvent("job", t.ProjectID, t.Org, s.jobJSON(j, base, false), before)}

	done := true
	for _, o := range s.jobs {
		if o.TaskID == t.ID && (o.Stage != "acceptance" || o.State != "completed") {
			done = false
		}
	}
	if done && t.Status != "completed" {
		tb := ordered{{"updated_date", cvatTime(t.UpdatedDate)}, {"status", t.Status}}
		t.Status = "completed"
		t.UpdatedDate = s.now()
		evs = append(evs, s.updateEvent("task", t.ProjectID, t.Org, s.taskJSON(t, base, false), tb))
	}
	return evs, nil
}

// DeleteTask removes the task and its jobs and returns the delete:task event.
func (s *Server) DeleteTask(id int64) (Event, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tasks[id]
	if !ok {
		return Event{}, fmt.Errorf("cvatfake: no task %d", id)
	}
	// The pre_delete snapshot carries the real job counters.
	obj := s.taskJSON(t, s.publicBase(), true)
	delete(s.tasks, id)
	for jid, j := range s.jobs {
		if j.TaskID == id {
			delete(s.jobs, jid)
		}
	}
	ev := Event{Name: "delete:task", ProjectID: t.ProjectID, Org: t.Org}
	ev.build = func(webhookID int64) ordered {
		return ordered{{"event", "delete:task"}, {"task", obj}, {"sender", s.sender(s.publicBase())}, {"webhook_id", webhookID}}
	}
	ev.render(s.defaultHookID(ev))
	return ev, nil
}

// publicBase is the base URL of absolute links in webhook bodies: CVAT
// builds them from the request that caused the change.
func (s *Server) publicBase() string {
	if s.opts.ExternalURL != "" {
		return s.opts.ExternalURL
	}
	return s.srv.URL
}

func (s *Server) user(base string) userJSON {
	return userJSON{URL: base + "/api/users/" + itoa(userID), ID: userID, Username: userName, FirstName: "User", LastName: "Seventh"}
}

func (s *Server) sender(base string) userJSON { return s.user(base) }

func (s *Server) orgID(slug string) *int64 {
	if slug == "" {
		return nil
	}
	return ptr(s.orgs[slug])
}

// taskJSON renders a task. rest selects the counters a REST answer has;
// webhooks raised from a save lack them (see the reference README).
func (s *Server) taskJSON(t *Task, base string, rest bool) taskJSON {
	var projectName *string
	if p, ok := s.projects[t.ProjectID]; ok {
		projectName = ptr(p.Name)
	}
	jobs := taskJobsJSON{URL: base + "/api/jobs?task_id=" + itoa(t.ID)}
	if rest {
		var n, done int64
		for _, j := range s.jobs {
			if j.TaskID == t.ID {
				n++
				if j.Stage == "acceptance" && j.State == "completed" {
					done++
				}
			}
		}
		jobs.Count, jobs.Completed, jobs.Validation = n, ptr(done), ptr(int64(0))
	}
	org := s.orgID(t.Org)
	return taskJSON{
		URL: base + "/api/tasks/" + itoa(t.ID), ID: t.ID, Name: t.Name,
		ProjectID: optID(t.ProjectID), ProjectName: projectName, Mode: t.Mode,
		Owner: s.user(base), CreatedDate: cvatTime(t.CreatedDate), UpdatedDate: cvatTime(t.UpdatedDate),
		SegmentSize: t.Size, Status: t.Status, DataChunkSize: 72,
		DataOriginalChunkType: "imageset", DataCompressedChunkType: "imageset",
		Size: t.Size, ImageQuality: 70, Data: t.ID, Dimension: "2d", Subset: t.Subset,
		OrganizationID: org, Organization: org, Jobs: jobs,
		Labels: urlJSON{URL: base + "/api/labels?task_id=" + itoa(t.ID)},
	}
}

func (s *Server) jobJSON(j *Job, base string, _ bool) jobJSON {
	t := s.tasks[j.TaskID]
	var projectName *string
	if p, ok := s.projects[t.ProjectID]; ok {
		projectName = ptr(p.Name)
	}
	return jobJSON{
		URL: base + "/api/jobs/" + itoa(j.ID), ID: j.ID, TaskID: t.ID, TaskName: t.Name,
		ProjectID: optID(t.ProjectID), ProjectName: projectName, Dimension: "2d",
		Status: j.Stage, Stage: j.Stage, State: j.State, Mode: t.Mode,
		FrameCount: t.Size, StopFrame: max(t.Size-1, 0), DataChunkSize: 72,
		DataCompressedChunkType: "imageset", DataOriginalChunkType: "imageset",
		CreatedDate: cvatTime(j.CreatedDate), UpdatedDate: cvatTime(j.UpdatedDate),
		Issues: issuesJSON{URL: base + "/api/issues?job_id=" + itoa(j.ID)},
		Labels: urlJSON{URL: base + "/api/labels?job_id=" + itoa(j.ID)},
		Type:   j.Type, Organization: s.orgID(t.Org),
	}
}

func (s *Server) projectJSON(p *Project, base string) projectJSON {
	var n int64
	subsets := []string{}
	for _, t := range s.tasks {
		if t.ProjectID == p.ID {
			n++
			if t.Subset != "" && !slices.Contains(subsets, t.Subset) {
				subsets = append(subsets, t.Subset)
			}
		}
	}
	slices.Sort(subsets)
	org := s.orgID(p.Org)
	return projectJSON{
		URL: base + "/api/projects/" + itoa(p.ID), ID: p.ID, Name: p.Name, Owner: s.user(base),
		TaskSubsets: subsets, CreatedDate: cvatTime(p.CreatedDate), UpdatedDate: cvatTime(p.UpdatedDate),
		Status: p.Status, Dimension: ptr("2d"), Organization: org, OrganizationID: org,
		Tasks:  countURLJSON{Count: n, URL: base + "/api/tasks?project_id=" + itoa(p.ID)},
		Labels: urlJSON{URL: base + "/api/labels?project_id=" + itoa(p.ID)},
	}
}

// Event is a webhook body CVAT would send for a change.
type Event struct {
	Name      string // e.g. "update:task"
	Body      []byte // exact bytes, for the first registered webhook that receives it (webhook_id 1 when none is registered)
	ProjectID int64  // scope, used to pick the receiving webhooks
	Org       string

	build func(webhookID int64) ordered
}

// For renders the body as sent to webhook webhookID.
func (e Event) For(webhookID int64) []byte {
	b, err := pyJSON(e.build(webhookID))
	if err != nil {
		panic(err) // only our own structs are encoded
	}
	return b
}

func (e *Event) render(webhookID int64) { e.Body = e.For(webhookID) }

// updateEvent builds a CVAT >= 2.44 update envelope:
// {resource, sender, event, before_update, webhook_id}.
func (s *Server) updateEvent(resource string, projectID int64, org string, obj any, before ordered) Event {
	name := "update:" + resource
	sender := s.sender(s.publicBase())
	ev := Event{Name: name, ProjectID: projectID, Org: org}
	ev.build = func(webhookID int64) ordered {
		o := ordered{{resource, obj}, {"sender", sender}, {"event", name}}
		if len(before) > 0 {
			o = append(o, pair{"before_update", before})
		}
		return append(o, pair{"webhook_id", webhookID})
	}
	ev.render(s.defaultHookID(ev))
	return ev
}
