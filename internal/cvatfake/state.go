package cvatfake

import (
	"errors"
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

// Events and the releases that fire them (VERSIONS.md §1.5): in 2.3–2.4.1
// only REST create, PATCH and DELETE calls fire webhooks; from 2.4.2 every
// model save does. The methods below change the fake's state as CVAT would
// and return the events CVAT sends for the change, each with the webhooks
// CVAT selected for it at that moment (see Dispatch). An event is returned
// even when no webhook receives it, so tests can deliver it by hand; an
// event the release does not fire at all is not returned.

// TouchTask saves the task as any model save does (a worker, a cascade):
// updated_date moves, and from 2.4.2 update:task is fired. 2.3–2.4.1 fire
// nothing for it.
func (s *Server) TouchTask(id int64) ([]Event, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tasks[id]
	if !ok {
		return nil, fmt.Errorf("cvatfake: no task %d", id)
	}
	ev, ok := s.touchTask(t)
	if !ok {
		return nil, nil
	}
	return []Event{ev}, nil
}

// touchTask bumps t's updated_date and builds the update:task a model save
// fires. The caller holds s.mu.
func (s *Server) touchTask(t *Task) (Event, bool) {
	old := t.UpdatedDate
	t.UpdatedDate = s.now()
	if s.restOnly() {
		return Event{}, false
	}
	return s.updateEvent(update{resource: "task", projectID: t.ProjectID, org: t.Org,
		obj:  s.taskJSON(t, s.publicBase(), s.at(2, 73, 0)),
		diff: []fieldChange{{"updated_date", cvatTime(old), cvatTime(t.UpdatedDate)}}},
		s.selectHooks("update:task", t.Org, t.ProjectID, true, true))
}

// SaveAnnotations does what an annotation save in job jobID does
// (dataset_manager/task.py _set_updated_date): 2.3–2.10 save the task only,
// 2.11.0+ touch the job and the task, 2.12.1+ the project too. It returns
// the update events, job, task, project in that order: none in 2.3–2.4.1
// (a model save fires nothing there), update:task only in 2.4.2–2.10.
func (s *Server) SaveAnnotations(jobID int64) ([]Event, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j, ok := s.jobs[jobID]
	if !ok {
		return nil, fmt.Errorf("cvatfake: no job %d", jobID)
	}
	t := s.tasks[j.TaskID]
	base := s.publicBase()
	real := s.at(2, 73, 0) // 2.73 re-reads the object: counters are real
	var evs []Event
	add := func(ev Event, ok bool) {
		if ok && !s.restOnly() {
			evs = append(evs, ev)
		}
	}
	if s.at(2, 11, 0) {
		old := j.UpdatedDate
		j.UpdatedDate = s.now()
		add(s.updateEvent(update{resource: "job", projectID: t.ProjectID, org: t.Org, obj: s.jobJSON(j, base, real),
			diff: []fieldChange{{"updated_date", cvatTime(old), cvatTime(j.UpdatedDate)}}},
			s.selectHooks("update:job", t.Org, t.ProjectID, true, true)))
	}
	add(s.touchTask(t))
	if p, ok := s.projects[t.ProjectID]; ok && s.at(2, 12, 1) {
		old := p.UpdatedDate
		p.UpdatedDate = s.now()
		add(s.updateEvent(update{resource: "project", projectID: p.ID, org: p.Org, obj: s.projectJSON(p, base),
			diff: []fieldChange{{"updated_date", cvatTime(old), cvatTime(p.UpdatedDate)}}},
			s.selectHooks("update:project", p.Org, p.ID, true, true)))
	}
	return evs, nil
}

// CompleteJob does what PATCH /api/jobs/{id} {"stage": "acceptance",
// "state": "completed"} does: it returns update:job, and, from 2.4.2, when
// every job of the task is now completed, update:task with
// before_update.status (the task's status becomes "completed" on every
// release, but before 2.4.2 that save fires nothing).
func (s *Server) CompleteJob(jobID int64) ([]Event, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j, ok := s.jobs[jobID]
	if !ok {
		return nil, fmt.Errorf("cvatfake: no job %d", jobID)
	}
	t := s.tasks[j.TaskID]
	base := s.publicBase()
	// 2.3–2.4.1: before_update has the PATCH body's keys with their
	// serialized old values (engine/mixins.py PartialUpdateModelMixin).
	patch := ordered{{"stage", j.Stage}, {"state", j.State}}
	oldStage, oldState, oldDate := j.Stage, j.State, j.UpdatedDate
	j.Stage, j.State = "acceptance", "completed"
	j.UpdatedDate = s.now()
	var diff []fieldChange
	if oldStage != j.Stage {
		diff = append(diff, fieldChange{"status", oldStage, j.Stage}, fieldChange{"stage", oldStage, j.Stage})
	}
	if oldState != j.State {
		diff = append(diff, fieldChange{"state", oldState, j.State})
	}
	diff = append(diff, fieldChange{"updated_date", cvatTime(oldDate), cvatTime(j.UpdatedDate)})
	var evs []Event
	if ev, ok := s.updateEvent(update{resource: "job", projectID: t.ProjectID, org: t.Org, obj: s.jobJSON(j, base, s.at(2, 73, 0)),
		diff: diff, patch: patch}, s.selectHooks("update:job", t.Org, t.ProjectID, true, true)); ok {
		evs = append(evs, ev)
	}

	done := true
	for _, o := range s.jobs {
		if o.TaskID == t.ID && (o.Stage != "acceptance" || o.State != "completed") {
			done = false
		}
	}
	if done && t.Status != "completed" {
		oldStatus, oldDate := t.Status, t.UpdatedDate
		t.Status = "completed"
		t.UpdatedDate = s.now()
		// engine/signals.py recomputes the task's status in a model save.
		if ev, ok := s.updateEvent(update{resource: "task", projectID: t.ProjectID, org: t.Org, obj: s.taskJSON(t, base, s.at(2, 73, 0)),
			diff: []fieldChange{{"updated_date", cvatTime(oldDate), cvatTime(t.UpdatedDate)}, {"status", oldStatus, t.Status}}},
			s.selectHooks("update:task", t.Org, t.ProjectID, true, true)); ok && !s.restOnly() {
			evs = append(evs, ev)
		}
	}
	return evs, nil
}

// DeleteTask does what DELETE /api/tasks/{id} does: it removes the task and
// its jobs and returns the delete:task event (fired on every release). The
// delete:job events of the cascade (2.4.2+) are not returned.
func (s *Server) DeleteTask(id int64) (Event, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tasks[id]
	if !ok {
		return Event{}, fmt.Errorf("cvatfake: no task %d", id)
	}
	// The pre_delete snapshot carries the real job counters.
	ev := s.deleteEvent("task", t.ProjectID, t.Org, s.taskJSON(t, s.publicBase(), true), false,
		s.selectHooks("delete:task", t.Org, t.ProjectID, true, true))
	s.removeTask(id)
	return ev, nil
}

func (s *Server) removeTask(id int64) {
	delete(s.tasks, id)
	for jid, j := range s.jobs {
		if j.TaskID == id {
			delete(s.jobs, jid)
		}
	}
}

// DeleteProject does what DELETE /api/projects/{id} does: the project, its
// tasks, their jobs and the project's webhooks (with their deliveries) go
// in one cascade (VERSIONS.md §1.9). It returns delete:project, then
// delete:task per task and delete:job per job (2.4.2+), each with the
// webhooks CVAT selected:
//   - 2.3–2.4.1: delete:project only (REST), to organization webhooks
//     (project webhooks cannot subscribe to it);
//   - 2.4.2–2.10: delete:project also to every webhook of the project,
//     whatever its events or state (signals.py pre_delete @2.4.2), sent
//     although the webhook is gone; the cascade's deletes reach
//     organization webhooks only, the project's webhook rows being gone
//     when they are selected (post_delete);
//   - 2.11–2.64: the same, but only to project webhooks subscribed to
//     delete:project and active;
//   - 2.65+: project webhooks get nothing: the worker reads the webhook
//     again and it is gone.
//
// Deliveries to a webhook deleted in the cascade are never recorded.
func (s *Server) DeleteProject(id int64) ([]Event, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.projects[id]
	if !ok {
		return nil, fmt.Errorf("cvatfake: no project %d", id)
	}
	base := s.publicBase()
	var projectHooks []hookSnap
	switch {
	case s.restOnly():
	case !s.at(2, 11, 0):
		for _, hid := range s.hookIDs() {
			if h := s.hooks[hid]; h.typ == "project" && h.projectID == id {
				projectHooks = append(projectHooks, h.snap())
			}
		}
	case !s.post11104():
		projectHooks = s.selectHooks("delete:project", p.Org, id, false, true)
	}
	var evs []Event
	if s.restOnly() {
		evs = append(evs, s.deleteEvent("project", id, p.Org, s.projectJSON(p, base), false, s.selectHooks("delete:project", p.Org, id, true, true)))
	} else {
		evs = append(evs, s.deleteEvent("project", id, p.Org, s.projectJSON(p, base), false,
			append(s.selectHooks("delete:project", p.Org, id, true, false), projectHooks...)))
	}
	var taskIDs []int64
	for tid, t := range s.tasks {
		if t.ProjectID == id {
			taskIDs = append(taskIDs, tid)
		}
	}
	slices.Sort(taskIDs)
	if !s.restOnly() {
		var jobEvs []Event
		for _, tid := range taskIDs {
			t := s.tasks[tid]
			evs = append(evs, s.deleteEvent("task", id, t.Org, s.taskJSON(t, base, true), false, s.selectHooks("delete:task", t.Org, id, true, false)))
			for _, jid := range s.jobIDs(tid) {
				jobEvs = append(jobEvs, s.deleteEvent("job", id, t.Org, s.jobJSON(s.jobs[jid], base, true), false, s.selectHooks("delete:job", t.Org, id, true, false)))
			}
		}
		evs = append(evs, jobEvs...)
	}
	for _, tid := range taskIDs {
		s.removeTask(tid)
	}
	delete(s.projects, id)
	for _, hid := range s.hookIDs() {
		if h := s.hooks[hid]; h.typ == "project" && h.projectID == id {
			s.dropHook(hid)
		}
	}
	return evs, nil
}

func (s *Server) jobIDs(taskID int64) []int64 {
	var ids []int64
	for jid, j := range s.jobs {
		if j.TaskID == taskID {
			ids = append(ids, jid)
		}
	}
	slices.Sort(ids)
	return ids
}

// ErrNoTransfer is returned by MoveTask and MoveProject for a release
// without organization transfer (before 2.44) and by MoveTask for a task in
// a project, which CVAT refuses ("Only top-level resources can be moved
// between workspaces", engine/serializers.py TaskWriteSerializer).
var ErrNoTransfer = errors.New("cvatfake: transfer refused")

// MoveTask does what PATCH /api/tasks/{id} {"organization_id": ...} does
// from 2.44 for a task outside any project: the task moves to organization
// org ("" = the personal sandbox). It returns delete:task, selected among
// the old organization's webhooks, and create:task, among the new one's
// (signals.py pre_save @2.44.0). The delete carries the task as it was
// before the move up to 2.72 and as it is after from 2.73. (The update:task
// of the same save goes to the project's webhooks: a top-level task has
// none.)
func (s *Server) MoveTask(id int64, org string) ([]Event, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tasks[id]
	switch {
	case !ok:
		return nil, fmt.Errorf("cvatfake: no task %d", id)
	case !s.at(2, 44, 0):
		return nil, fmt.Errorf("%w: CVAT %s has no organization transfer (2.44+)", ErrNoTransfer, s.opts.Version)
	case t.ProjectID != 0:
		return nil, fmt.Errorf("%w: task %d is in project %d: only top-level resources can be moved between workspaces", ErrNoTransfer, id, t.ProjectID)
	case t.Org == org:
		return nil, nil
	}
	s.org(org)
	base := s.publicBase()
	before := s.taskJSON(t, base, s.at(2, 73, 0))
	oldOrg := t.Org
	t.Org = org
	t.UpdatedDate = s.now()
	after := s.taskJSON(t, base, s.at(2, 73, 0))
	if s.at(2, 73, 0) {
		before = after
	}
	return []Event{
		s.deleteEvent("task", 0, oldOrg, before, true, s.selectHooks("delete:task", oldOrg, 0, true, false)),
		s.createEvent("task", 0, org, after, true, s.selectHooks("create:task", org, 0, true, false)),
	}, nil
}

// MoveProject does what PATCH /api/projects/{id} {"organization_id": ...}
// does from 2.44: the project moves to organization org ("" = the personal
// sandbox). Its tasks are re-homed by a bulk update (engine/serializers.py
// update_child_objects_on_organization_update): their organization changes,
// their updated_date does not, and no task event is fired. The project's
// webhooks move with it and keep firing. It returns update:project (to the
// project's webhooks), delete:project (to the old organization's) and
// create:project (to the new one's); the delete carries the project before
// the move up to 2.72, after it from 2.73.
func (s *Server) MoveProject(id int64, org string) ([]Event, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.projects[id]
	switch {
	case !ok:
		return nil, fmt.Errorf("cvatfake: no project %d", id)
	case !s.at(2, 44, 0):
		return nil, fmt.Errorf("%w: CVAT %s has no organization transfer (2.44+)", ErrNoTransfer, s.opts.Version)
	case p.Org == org:
		return nil, nil
	}
	s.org(org)
	base := s.publicBase()
	// Selected in pre_save, before anything moves.
	toUpdate := s.selectHooks("update:project", p.Org, id, false, true)
	toDelete := s.selectHooks("delete:project", p.Org, id, true, false)
	toCreate := s.selectHooks("create:project", org, id, true, false)
	before := s.projectJSON(p, base)
	oldOrg, oldDate := p.Org, p.UpdatedDate
	p.Org = org
	p.UpdatedDate = s.now()
	for _, t := range s.tasks {
		if t.ProjectID == id {
			t.Org = org
		}
	}
	for _, h := range s.hooks {
		if h.typ == "project" && h.projectID == id {
			h.org = org
		}
	}
	after := s.projectJSON(p, base)
	oldOrgID, newOrgID := s.orgIDValue(oldOrg), s.orgIDValue(org)
	upd, _ := s.updateEvent(update{resource: "project", projectID: id, org: org, obj: after, transfer: true,
		diff: []fieldChange{{"updated_date", cvatTime(oldDate), cvatTime(p.UpdatedDate)},
			{"organization", oldOrgID, newOrgID}, {"organization_id", oldOrgID, newOrgID}},
		model: []fieldChange{{"organization_id", oldOrgID, newOrgID}, {"updated_date", cvatTime(oldDate), cvatTime(p.UpdatedDate)}},
	}, toUpdate)
	if s.at(2, 73, 0) {
		before = after
	}
	return []Event{
		upd,
		s.deleteEvent("project", id, oldOrg, before, true, toDelete),
		s.createEvent("project", id, org, after, true, toCreate),
	}, nil
}

// orgIDValue is the organization id as JSON (nil for the sandbox).
func (s *Server) orgIDValue(slug string) any {
	if id := s.orgID(slug); id != nil {
		return *id
	}
	return nil
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
	return taskJSON{shape273: s.at(2, 73, 0),
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

// Event is a webhook body CVAT would send.
type Event struct {
	Name      string // e.g. "update:task"
	Body      []byte // exact bytes, for the first webhook CVAT selected (webhook_id 1 when none was)
	ProjectID int64  // scope
	Org       string

	build func(webhookID int64) ordered
	to    []hookSnap
}

// For renders the body as sent to webhook webhookID.
func (e Event) For(webhookID int64) []byte {
	b, err := pyJSON(e.build(webhookID))
	if err != nil {
		panic(err) // only our own structs are encoded
	}
	return b
}

// Recipients are the ids of the webhooks CVAT selected for the event when
// it happened: Dispatch delivers to them.
func (e Event) Recipients() []int64 {
	ids := make([]int64, len(e.to))
	for i, h := range e.to {
		ids[i] = h.id
	}
	return ids
}

func (e *Event) render(webhookID int64) { e.Body = e.For(webhookID) }
