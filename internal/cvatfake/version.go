package cvatfake

import "fmt"

type version struct{ major, minor, patch int }

func parseVersion(s string) (version, bool) {
	var v version
	n, _ := fmt.Sscanf(s, "%d.%d.%d", &v.major, &v.minor, &v.patch)
	return v, n >= 2
}

func (v version) atLeast(major, minor int) bool {
	return v.major > major || (v.major == major && v.minor >= minor)
}
