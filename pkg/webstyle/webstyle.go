// Package webstyle is the stylesheet shared by clustral's two web pages:
// the coordinator's console and the local live view of `clustral ui`.
// Both serve it as /static/console.css.
package webstyle

import "embed"

// FS holds console.css.
//
//go:embed console.css
var FS embed.FS
