package main

import (
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/cvat-sync/cvat-sync/internal/config"
)

// helpWidth is where help text wraps.
const helpWidth = 80

// writeCommands prints a list of commands under a usage line.
func writeCommands(w io.Writer, usage string, cmds []command) {
	var b strings.Builder
	b.WriteString(usage + "\n\n")
	if strings.HasPrefix(usage, "usage: receiver [") {
		b.WriteString(wrap("cvat-sync receives CVAT's signed webhooks and keeps Cloud Storage and Pub/Sub in step with CVAT's annotation tasks.", "") + "\n")
	}
	b.WriteString("Commands:\n")
	width := 0
	for _, c := range cmds {
		width = max(width, len(c.name))
	}
	for _, c := range cmds {
		fmt.Fprintf(&b, "  %-*s  %s\n", width, c.name, c.summary)
	}
	b.WriteString("\n" + wrap(`Run "receiver <command> -h" for the flags and settings of a command. Every setting is a flag with an environment variable of the same name: --cvat-url is CVAT_SYNC_CVAT_URL.`, ""))
	_, _ = io.WriteString(w, b.String())
}

// commandHelp prints a command's usage, its own flags and the settings it
// reads, grouped as config groups them.
func commandHelp(w io.Writer, c command, fs *flag.FlagSet, settings *config.Flags) {
	var b strings.Builder
	fmt.Fprintf(&b, "usage: receiver %s [flags]", c.name)
	if c.synopsis != "" {
		b.WriteString(" " + c.synopsis)
	}
	b.WriteString("\n\n" + wrap(c.about, "") + "\n")
	var own []*flag.Flag
	fs.VisitAll(func(f *flag.Flag) {
		if settings == nil || !settings.IsSetting(f.Name) {
			own = append(own, f)
		}
	})
	if len(own) > 0 {
		b.WriteString("Flags:\n")
		for _, f := range own {
			typ, usage := flag.UnquoteUsage(f)
			head := "  --" + f.Name
			if typ != "" {
				head += " " + typ
			}
			if f.DefValue != "" && f.DefValue != "0" && f.DefValue != "false" && f.DefValue != "0s" {
				head += "  (default " + quoteSpaced(f.DefValue) + ")"
			}
			b.WriteString(head + "\n" + wrap(usage, "        "))
		}
		b.WriteString("\n")
	}
	if settings != nil {
		b.WriteString(wrap("Settings: a flag wins over its environment variable, which wins over the default. A secret can also come from a file (--<flag>-file or <VARIABLE>_FILE). Booleans: --flag alone is true, --flag=false turns it off.", ""))
		group := ""
		for _, s := range settings.Settings() {
			if s.Group != group {
				group = s.Group
				b.WriteString("\n" + group + ":\n")
			}
			head := "  --" + s.Flag
			if s.Kind != config.Bool {
				head += " " + string(s.Kind)
			}
			env := s.Env
			if s.Secret {
				head += ", --" + s.FileFlag() + " path"
				env += ", " + s.Env + "_FILE"
			}
			if s.Default != "" {
				env += "; default " + quoteSpaced(s.Default)
			}
			b.WriteString(head + "  (" + env + ")\n" + wrap(s.Usage, "        "))
		}
	}
	_, _ = io.WriteString(w, b.String())
}

// wrap breaks text into lines of at most helpWidth columns, each starting
// with indent, and ends it with a newline.
func wrap(text, indent string) string {
	var b strings.Builder
	line := indent
	for _, word := range strings.Fields(text) {
		if len(line) > len(indent) && len(line)+1+len(word) > helpWidth {
			b.WriteString(line + "\n")
			line = indent
		}
		if len(line) > len(indent) {
			line += " "
		}
		line += word
	}
	if len(line) > len(indent) {
		b.WriteString(line + "\n")
	}
	return b.String()
}

// quoteSpaced quotes a default that has spaces, so where it ends is clear.
func quoteSpaced(v string) string {
	if strings.ContainsAny(v, " \t") {
		return strconv.Quote(v)
	}
	return v
}
