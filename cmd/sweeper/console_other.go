//go:build !unix

package main

import "io"

// terminalColumns does not know the terminal's width on this system:
// $COLUMNS or 80 stand in for it.
func terminalColumns(io.Writer) (int, bool) { return 0, false }
