package grafana

import (
	"fmt"
	"slices"
	"testing"
)

// metricNames returns the metric names a PromQL expression selects, in
// order of appearance, each once. It knows PromQL's lexical structure, not
// its grammar: it skips label matchers ({...}), ranges ([...]), strings,
// numbers and durations, Grafana's $variables, the label lists of by,
// without, on, ignoring and group_left/right, and operators; an
// identifier followed by "(" must be a PromQL function or aggregation,
// and any other identifier that is not a keyword is a metric name.
func metricNames(expr string) ([]string, error) {
	var names []string
	s := []rune(expr)
	i := 0
	skipSpace := func() {
		for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r') {
			i++
		}
	}
	skipTo := func(open, close rune) error { // s[i] == open
		depth := 0
		for i < len(s) {
			switch s[i] {
			case '"', '\'', '`':
				if err := skipString(s, &i); err != nil {
					return err
				}
				continue
			case open:
				depth++
			case close:
				depth--
			}
			i++
			if depth == 0 {
				return nil
			}
		}
		return fmt.Errorf("unbalanced %c", open)
	}
	for i < len(s) {
		c := s[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			if err := skipString(s, &i); err != nil {
				return nil, err
			}
		case c == '{':
			if err := skipTo('{', '}'); err != nil {
				return nil, err
			}
		case c == '[':
			if err := skipTo('[', ']'); err != nil {
				return nil, err
			}
		case c == '$': // a Grafana variable: $name or ${name}
			i++
			if i < len(s) && s[i] == '{' {
				if err := skipTo('{', '}'); err != nil {
					return nil, err
				}
			}
			for i < len(s) && isIdent(s[i]) {
				i++
			}
		case c >= '0' && c <= '9' || c == '.':
			for i < len(s) && (isIdent(s[i]) || s[i] == '.') {
				i++
			}
		case isIdentStart(c):
			start := i
			for i < len(s) && isIdent(s[i]) {
				i++
			}
			word := string(s[start:i])
			skipSpace()
			call := i < len(s) && s[i] == '('
			switch {
			case labelLists[word]:
				if call {
					if err := skipTo('(', ')'); err != nil {
						return nil, err
					}
				}
			case keywords[word], functions[word]: // an aggregation's "by (...)" may come before its "("
			case call:
				return nil, fmt.Errorf("unknown function %s", word)
			default:
				if !slices.Contains(names, word) {
					names = append(names, word)
				}
			}
		default:
			i++
		}
	}
	return names, nil
}

func skipString(s []rune, i *int) error {
	q := s[*i]
	for *i++; *i < len(s); *i++ {
		switch {
		case s[*i] == '\\' && q != '`':
			*i++
		case s[*i] == q:
			*i++
			return nil
		}
	}
	return fmt.Errorf("unterminated string")
}

func isIdentStart(c rune) bool {
	return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

func isIdent(c rune) bool { return isIdentStart(c) || c >= '0' && c <= '9' }

// labelLists are the keywords followed by a list of label names.
var labelLists = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
}

var keywords = map[string]bool{
	"and": true, "or": true, "unless": true, "bool": true, "offset": true, "atan2": true,
	"inf": true, "Inf": true, "nan": true, "NaN": true, "start": true, "end": true,
}

// functions are PromQL's functions and aggregations.
var functions = map[string]bool{}

func init() {
	for _, f := range []string{
		// aggregations
		"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
		"bottomk", "topk", "quantile", "limitk", "limit_ratio",
		// functions
		"abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
		"day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp", "floor",
		"histogram_avg", "histogram_count", "histogram_fraction", "histogram_quantile", "histogram_stddev",
		"histogram_stdvar", "histogram_sum", "double_exponential_smoothing", "holt_winters", "hour", "idelta",
		"increase", "irate", "label_join", "label_replace", "ln", "log2", "log10", "minute", "month",
		"predict_linear", "rate", "resets", "round", "scalar", "sgn", "sort", "sort_desc",
		"sort_by_label", "sort_by_label_desc", "sqrt", "time", "timestamp", "vector", "year",
		"avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time",
		"quantile_over_time", "stddev_over_time", "stdvar_over_time", "last_over_time",
		"present_over_time", "mad_over_time",
	} {
		functions[f] = true
	}
}

func TestMetricNames(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		expr string
		want []string
		err  bool
	}{
		{`lazymigrate_reads_total`, []string{"lazymigrate_reads_total"}, false},
		{`sum by (outcome) (rate(lazymigrate_reads_total{table=~"$table", outcome!="x{"}[$__rate_interval]))`,
			[]string{"lazymigrate_reads_total"}, false},
		{`histogram_quantile(0.99, sum by (le, route) (rate(a_bucket[5m]))) / on(route) group_left(x) b offset 1h`,
			[]string{"a_bucket", "b"}, false},
		{`(sum(rate(a{source="new"}[5m])) or vector(0)) / sum without (instance) (c) > bool 0.5 and d`,
			[]string{"a", "c", "d"}, false},
		{`max(x) == 1 unless y{mode='a\'b'}`, []string{"x", "y"}, false},
		{`1e3 * ${var} + 0x1f`, nil, false},
		{`made_up(x)`, nil, true},
		{`x{a="b"`, nil, true},
	} {
		got, err := metricNames(c.expr)
		if (err != nil) != c.err || !slices.Equal(got, c.want) {
			t.Errorf("metricNames(%s) = %v, %v; want %v (error %v)", c.expr, got, err, c.want, c.err)
		}
	}
}
