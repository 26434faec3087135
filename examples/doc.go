// Package examples holds runnable programs that show each way of using
// lazymigrate; each lives in its own folder. The example service and
// `make demo` arrive with issue 5.
package examples
