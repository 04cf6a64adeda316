// render: renders a Helm chart the way `helm template` does, without helm.
//
// There is no helm binary on the development machines and no network, so the chart is
// checked by this small renderer, built offline from Debian's Go packages (text/template,
// sprig, ghodss/yaml: the libraries helm itself uses). It reproduces the parts of helm's
// engine the chart relies on:
//
//   - values: the chart's values.yaml, then each -f file coalesced over it in order
//     (maps merge recursively, a null deletes the key), numbers decoded as float64
//     through JSON exactly as helm decodes them;
//   - templates: every file under templates/ parsed into one template set (so `define`s
//     in _*.tpl are shared), each file not starting with "_" executed with
//     missingkey=zero and "<no value>" removed, as helm does;
//   - functions: sprig's text functions without env/expandenv, plus helm's include, tpl,
//     required, fail, toYaml, fromYaml, toJson, fromJson, lookup (always empty, as with
//     `helm template`), and the built-in objects .Values, .Release, .Chart, .Capabilities,
//     .Template, .Files (Get, GetBytes, Lines, Glob).
//
// Usage:
//   render -chart DIR -out DIR [-f values.yaml]... [-name RELEASE] [-namespace NS]
//
// Writes each rendered template under OUT/<chart>/templates/... as
// `helm template --output-dir` does (documents trimmed, each after "---" and a
// "# Source:" line) and OUT/render.json: {"values": merged values,
// "objects": [{"source", "object"}...], "notes": NOTES.txt}. Exits 1 with helm-style
// messages ("execution error at (parley/templates/x.yaml:3:4): ...") on any error.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"github.com/ghodss/yaml"
)

type valueFiles []string

func (v *valueFiles) String() string     { return strings.Join(*v, ",") }
func (v *valueFiles) Set(s string) error { *v = append(*v, s); return nil }

func main() {
	var files valueFiles
	chartDir := flag.String("chart", "", "chart directory")
	outDir := flag.String("out", "", "output directory")
	release := flag.String("name", "parley", "release name")
	namespace := flag.String("namespace", "parley", "release namespace")
	flag.Var(&files, "f", "values file (repeatable; later files win)")
	flag.Parse()
	if *chartDir == "" || *outDir == "" {
		fmt.Fprintln(os.Stderr, "usage: render -chart DIR -out DIR [-f values.yaml]...")
		os.Exit(2)
	}
	if err := run(*chartDir, *outDir, *release, *namespace, files); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}

func run(chartDir, outDir, release, namespace string, valueFiles []string) error {
	chart, err := loadChart(chartDir)
	if err != nil {
		return err
	}
	values, err := readYAMLMap(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		return err
	}
	for _, f := range valueFiles {
		user, err := readYAMLMap(f)
		if err != nil {
			return err
		}
		values = coalesce(user, values)
	}
	top := map[string]interface{}{
		"Values": values,
		"Chart":  chart.metadata,
		"Release": map[string]interface{}{
			"Name": release, "Namespace": namespace, "Service": "Helm",
			"IsInstall": true, "IsUpgrade": false, "Revision": 1,
		},
		"Capabilities": capabilities(),
		"Files":        chart.files,
	}
	rendered, err := renderTemplates(chart, top)
	if err != nil {
		return err
	}
	return writeOutput(outDir, chart.name, values, rendered)
}

// ---- chart loading ----------------------------------------------------------------

type chartFiles struct {
	name      string
	metadata  map[string]interface{}
	templates map[string]string // "parley/templates/x.yaml" -> text
	files     Files
}

func loadChart(dir string) (*chartFiles, error) {
	meta, err := readYAMLMap(filepath.Join(dir, "Chart.yaml"))
	if err != nil {
		return nil, err
	}
	name, _ := meta["name"].(string)
	if name == "" {
		return nil, errors.New("Chart.yaml: name is required")
	}
	// .Chart exposes Chart.yaml's fields capitalised, as helm's chart.Metadata does.
	metadata := map[string]interface{}{}
	for k, v := range meta {
		metadata[strings.ToUpper(k[:1])+k[1:]] = v
	}
	c := &chartFiles{name: name, metadata: metadata, templates: map[string]string{}, files: Files{}}
	err = filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		switch {
		case strings.HasPrefix(rel, "templates/"):
			c.templates[path.Join(name, rel)] = string(data)
		case rel == "Chart.yaml" || rel == "values.yaml" || rel == "values.schema.json":
		default:
			c.files[rel] = data
		}
		return nil
	})
	return c, err
}

// Files is .Files: every chart file outside templates/ by its path in the chart.
type Files map[string][]byte

// Get returns a file's contents, or "" when the chart has no such file (as helm does).
func (f Files) Get(name string) string { return string(f[name]) }

func (f Files) GetBytes(name string) []byte { return f[name] }

func (f Files) Lines(name string) []string {
	if len(f[name]) == 0 {
		return []string{}
	}
	return strings.Split(strings.TrimRight(string(f[name]), "\n"), "\n")
}

// Glob returns the files matching a shell pattern ("**" matches across directories).
func (f Files) Glob(pattern string) Files {
	re := globRegexp(pattern)
	out := Files{}
	for name, data := range f {
		if re.MatchString(name) {
			out[name] = data
		}
	}
	return out
}

func globRegexp(pattern string) *regexp.Regexp {
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(pattern); i++ {
		switch ch := pattern[i]; {
		case ch == '*' && i+1 < len(pattern) && pattern[i+1] == '*':
			b.WriteString(".*")
			i++
		case ch == '*':
			b.WriteString("[^/]*")
		case ch == '?':
			b.WriteString("[^/]")
		default:
			b.WriteString(regexp.QuoteMeta(string(ch)))
		}
	}
	b.WriteString("$")
	return regexp.MustCompile(b.String())
}

type APIVersions []string

// Has reports whether the cluster serves a group/version (or group/version/Kind).
func (a APIVersions) Has(v string) bool {
	for _, x := range a {
		if x == v {
			return true
		}
	}
	return false
}

// capabilities is what `helm template` assumes without a cluster: its built-in
// Kubernetes version and the core API versions only (no CRDs such as
// monitoring.coreos.com, exactly as helm without --api-versions).
func capabilities() map[string]interface{} {
	return map[string]interface{}{
		"KubeVersion": map[string]interface{}{
			"Version": "v1.28.0", "Major": "1", "Minor": "28", "GitVersion": "v1.28.0",
		},
		"APIVersions": APIVersions{
			"v1", "apps/v1", "batch/v1", "autoscaling/v2", "policy/v1",
			"networking.k8s.io/v1", "rbac.authorization.k8s.io/v1",
		},
		"HelmVersion": map[string]interface{}{"Version": "v3.13.0"},
	}
}

// ---- values -----------------------------------------------------------------------

func readYAMLMap(file string) (map[string]interface{}, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	out := map[string]interface{}{}
	if err := yaml.Unmarshal(data, &out); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return out, nil
}

// coalesce merges src over dst the way helm coalesces user values over a chart's
// defaults: maps merge key by key, anything else is replaced, and null deletes.
func coalesce(src, dst map[string]interface{}) map[string]interface{} {
	out := map[string]interface{}{}
	for k, v := range dst {
		out[k] = v
	}
	for k, v := range src {
		if v == nil {
			delete(out, k)
			continue
		}
		srcMap, srcIsMap := v.(map[string]interface{})
		dstMap, dstIsMap := out[k].(map[string]interface{})
		if srcIsMap && dstIsMap {
			out[k] = coalesce(srcMap, dstMap)
		} else {
			out[k] = v
		}
	}
	return out
}

// ---- templates --------------------------------------------------------------------

type renderedFile struct {
	name string
	text string
}

func renderTemplates(c *chartFiles, top map[string]interface{}) ([]renderedFile, error) {
	root := template.New("chart")
	funcs := funcMap(root)
	root.Funcs(funcs).Option("missingkey=zero")
	names := make([]string, 0, len(c.templates))
	for name := range c.templates {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if _, err := root.New(name).Parse(c.templates[name]); err != nil {
			return nil, fmt.Errorf("parse error in %s", strings.TrimPrefix(err.Error(), "template: "))
		}
	}
	var out []renderedFile
	for _, name := range names {
		if strings.HasPrefix(path.Base(name), "_") {
			continue
		}
		data := withTemplate(top, name, c.name)
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, name, data); err != nil {
			return nil, helmError(err)
		}
		out = append(out, renderedFile{name: name, text: strings.ReplaceAll(buf.String(), "<no value>", "")})
	}
	return out, nil
}

func withTemplate(top map[string]interface{}, name, chart string) map[string]interface{} {
	data := map[string]interface{}{}
	for k, v := range top {
		data[k] = v
	}
	data["Template"] = map[string]interface{}{"Name": name, "BasePath": path.Join(chart, "templates")}
	return data
}

// helmError words an execution error as helm does: "execution error at (file:line:col): msg",
// with the message of the innermost fail or required, however deep the include chain.
func helmError(err error) error {
	msg := err.Error()
	for _, marker := range []string{"error calling fail: ", "error calling required: "} {
		if i := strings.LastIndex(msg, marker); i >= 0 {
			where := ""
			if m := regexp.MustCompile(`^template: ([^:]+:\d+:\d+)`).FindStringSubmatch(msg); m != nil {
				where = m[1]
			}
			return fmt.Errorf("execution error at (%s): %s", where, msg[i+len(marker):])
		}
	}
	return errors.New(strings.TrimPrefix(msg, "template: "))
}

func funcMap(root *template.Template) template.FuncMap {
	f := sprig.TxtFuncMap()
	delete(f, "env")
	delete(f, "expandenv")
	f["toYaml"] = func(v interface{}) string {
		data, err := yaml.Marshal(v)
		if err != nil {
			return ""
		}
		return strings.TrimSuffix(string(data), "\n")
	}
	f["fromYaml"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := yaml.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	f["toJson"] = func(v interface{}) string {
		data, err := json.Marshal(v)
		if err != nil {
			return ""
		}
		return string(data)
	}
	f["fromJson"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	f["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil {
			return v, errors.New(msg)
		}
		if s, ok := v.(string); ok && s == "" {
			return v, errors.New(msg)
		}
		return v, nil
	}
	f["fail"] = func(msg string) (string, error) { return "", errors.New(msg) }
	f["lookup"] = func(string, string, string, string) (map[string]interface{}, error) {
		return map[string]interface{}{}, nil
	}
	f["include"] = func(name string, data interface{}) (string, error) {
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, name, data); err != nil {
			return "", err
		}
		return buf.String(), nil
	}
	f["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", err
		}
		if _, err := t.New("tpl").Parse(text); err != nil {
			return "", err
		}
		var buf bytes.Buffer
		if err := t.ExecuteTemplate(&buf, "tpl", data); err != nil {
			return "", err
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
	return f
}

// ---- output -----------------------------------------------------------------------

type object struct {
	Source string                 `json:"source"`
	Object map[string]interface{} `json:"object"`
}

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

func writeOutput(outDir, chart string, values map[string]interface{}, files []renderedFile) error {
	result := struct {
		Values  map[string]interface{} `json:"values"`
		Objects []object               `json:"objects"`
		Notes   string                 `json:"notes"`
	}{Values: values, Objects: []object{}}
	for _, f := range files {
		if path.Base(f.name) == "NOTES.txt" {
			result.Notes = f.text
			continue
		}
		// helm splits each template's output into documents, trims each and drops the
		// empty ones, then writes "---\n# Source: <template>\n<document>\n" per document.
		var manifest strings.Builder
		for i, doc := range docSeparator.Split(f.text, -1) {
			doc = strings.TrimSpace(doc)
			if doc == "" {
				continue
			}
			fmt.Fprintf(&manifest, "---\n# Source: %s\n%s\n", f.name, doc)
			if strings.TrimSpace(stripComments(doc)) == "" {
				continue
			}
			obj := map[string]interface{}{}
			if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
				return fmt.Errorf("YAML parse error in %s (document %d): %v", f.name, i+1, err)
			}
			result.Objects = append(result.Objects, object{Source: f.name, Object: obj})
		}
		if manifest.Len() == 0 {
			continue // a template that renders nothing yields no file, as in helm
		}
		if err := writeFile(filepath.Join(outDir, filepath.FromSlash(f.name)), manifest.String()); err != nil {
			return err
		}
	}
	data, err := json.MarshalIndent(result, "", "  ")
	if err != nil {
		return err
	}
	return writeFile(filepath.Join(outDir, "render.json"), string(data))
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, line := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line)
			b.WriteString("\n")
		}
	}
	return b.String()
}

func writeFile(name, text string) error {
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		return err
	}
	return os.WriteFile(name, []byte(text), 0o644)
}
