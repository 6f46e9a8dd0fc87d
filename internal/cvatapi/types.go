package cvatapi

import (
	"io"
	"time"
)

// About is GET /api/server/about.
type About struct {
	Name    string `json:"name"`
	Version string `json:"version"` // X.Y.Z for releases; X.Y.Z.devN on develop builds
}

// Format is one exporter of GET /api/server/annotation/formats.
type Format struct {
	Name      string `json:"name"` // the value to pass as ?format=
	Ext       string `json:"ext"`
	Version   string `json:"version"`
	Enabled   bool   `json:"enabled"`
	Dimension string `json:"dimension"`
}

// User is CVAT's BasicUser summary.
type User struct {
	ID       int64  `json:"id"`
	Username string `json:"username"`
}

// Task is the part of CVAT's TaskRead that cvat-sync uses. JSON nulls decode
// to zero values (ProjectID 0 = no project, OrganizationID 0 = sandbox).
type Task struct {
	ID             int64     `json:"id"`
	URL            string    `json:"url"`
	Name           string    `json:"name"`
	ProjectID      int64     `json:"project_id"`
	ProjectName    string    `json:"project_name"`
	OrganizationID int64     `json:"organization"`
	Owner          *User     `json:"owner"`
	Assignee       *User     `json:"assignee"`
	Mode           string    `json:"mode"`
	Status         string    `json:"status"` // annotation | validation | completed
	Subset         string    `json:"subset"`
	Dimension      string    `json:"dimension"`
	Size           int64     `json:"size"` // frames; 0 before data is attached
	DataID         int64     `json:"data"` // 0 (null) while the task has no data: its exports fail (ErrNoData)
	CreatedDate    time.Time `json:"created_date"`
	UpdatedDate    time.Time `json:"updated_date"`
	Jobs           struct {
		Count     int64 `json:"count"`
		Completed int64 `json:"completed"`
	} `json:"jobs"`
}

// Job is the part of CVAT's JobRead that cvat-sync uses.
type Job struct {
	ID             int64     `json:"id"`
	TaskID         int64     `json:"task_id"`
	ProjectID      int64     `json:"project_id"`
	OrganizationID int64     `json:"organization"`
	Type           string    `json:"type"`  // annotation | ground_truth | consensus_replica
	Stage          string    `json:"stage"` // annotation | validation | acceptance
	State          string    `json:"state"` // new | in progress | rejected | completed
	Status         string    `json:"status"`
	CreatedDate    time.Time `json:"created_date"`
	UpdatedDate    time.Time `json:"updated_date"`
}

// Project is the part of CVAT's ProjectRead that cvat-sync uses.
type Project struct {
	ID             int64     `json:"id"`
	Name           string    `json:"name"`
	OrganizationID int64     `json:"organization"`
	Status         string    `json:"status"`
	CreatedDate    time.Time `json:"created_date"`
	UpdatedDate    time.Time `json:"updated_date"`
}

// TaskFilter selects tasks for ListTasks. Zero fields do not filter.
type TaskFilter struct {
	ProjectID    int64
	UpdatedSince time.Time // tasks with updated_date >= this
	IDs          []int64
	PageSize     int // default 100
}

// ExportOptions tunes ExportTask.
type ExportOptions struct {
	SaveImages bool // include images (a dataset export) instead of annotations only

	// UpdatedDate, when set, is the task state the caller will name the
	// archive for: once CVAT has the export ready, ExportTask reads the
	// task again and fails with ErrStateChanged if its updated_date moved
	// (CVAT's export holds the state when its job started, which may be
	// later than the caller's read). One more GET per export.
	UpdatedDate time.Time
}

// Export is a finished export being downloaded. Body must be closed. Body
// checks what it streams: its Read fails with an error wrapping
// ErrInvalidArchive when the byte count does not match Content-Length (the
// content type and the zip signature were checked before ExportTask
// returned).
type Export struct {
	Body        io.ReadCloser
	Size        int64 // -1 when CVAT sends no Content-Length
	Filename    string
	ContentType string
	API         string // "requests" (request-queue API) or "legacy"
}
