package cvatapi

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
)

// TaskJobs returns every job of task taskID (all pages), for deciding
// whether a job reached completed since the last export.
func (c *Client) TaskJobs(ctx context.Context, taskID int64) ([]Job, error) {
	q := url.Values{}
	q.Set("task_id", strconv.FormatInt(taskID, 10))
	q.Set("page_size", "100")
	var out []Job
	for n := 1; ; n++ {
		q.Set("page", strconv.Itoa(n))
		var p page[Job]
		if _, err := c.doJSON(ctx, call{method: "GET", route: "/api/jobs", path: "/api/jobs", query: q}, &p); err != nil {
			return nil, fmt.Errorf("list the jobs of task %d (page %d): %w", taskID, n, err)
		}
		out = append(out, p.Results...)
		if p.Next == nil || len(p.Results) == 0 {
			return out, nil
		}
	}
}
