package cloud

// CheckOnly makes e behave as on GCP (check, never create) while connected
// to emulators: what New decides for GCP, without GCP.
func CheckOnly(e *Env) {
	e.plan = Plan{Mode: GCP, Project: e.Project}
	e.Mode = GCP
}

// Creates reports whether an Env of plan p creates missing topics and
// subscriptions, and missing buckets.
func Creates(p Plan) (topics, buckets bool) { return p.createsTopics(), p.createsBuckets() }
