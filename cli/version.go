package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"
	utilversion "k8s.io/apimachinery/pkg/util/version"

	"github.com/clustral/clustral/pkg/version"
)

// versionCheck is the output of clustral version --check. Its JSON names
// are stable.
type versionCheck struct {
	version.Info
	Coordinator        string `json:"coordinator"`
	CoordinatorVersion string `json:"coordinator_version"`
	// Status is "current", "upgrade" (the coordinator is newer), "newer"
	// (this clustral is newer) or "unknown" (a version is not semantic).
	Status string `json:"status"`
	Advice string `json:"advice"`
}

func newVersionCmd(g *globals) *cobra.Command {
	var check bool
	c := &cobra.Command{
		Use:   "version",
		Short: "Print the version, commit and Go version",
		Long: `Print this clustral's version. --check also asks the coordinator which
version it runs (GET /api/v1/info) and says whether to upgrade.`,
		Example: `  clustral version
  clustral version -o json
  clustral version --check`,
		Args: cobra.NoArgs,
	}
	out := outputFlag(c)
	c.RunE = func(c *cobra.Command, _ []string) error {
		v := version.Get()
		if !check {
			return render(g.stdout, *out, v, func(tw *tabwriter.Writer) { fmt.Fprintln(tw, v.String()) })
		}
		base, hc, err := g.coordinator()
		if err != nil {
			return err
		}
		info, err := fetchInfo(c.Context(), base, hc)
		if err != nil {
			return err
		}
		vc := compareVersions(v, base, info.Version)
		return render(g.stdout, *out, vc, func(tw *tabwriter.Writer) {
			fmt.Fprintf(tw, "clustral %s; coordinator %s runs %s.\n%s\n", vc.Version, vc.Coordinator, vc.CoordinatorVersion, vc.Advice)
		})
	}
	c.Flags().BoolVar(&check, "check", false, "compare with the version the coordinator runs")
	return c
}

func compareVersions(v version.Info, coordinator, theirs string) versionCheck {
	vc := versionCheck{Info: v, Coordinator: coordinator, CoordinatorVersion: theirs, Status: "unknown"}
	mine, err1 := utilversion.ParseSemantic(v.Version)
	coord, err2 := utilversion.ParseSemantic(theirs)
	if err1 != nil || err2 != nil {
		vc.Advice = "Cannot compare: a development build has no release version. Install a release to compare."
		return vc
	}
	switch {
	case mine.LessThan(coord):
		vc.Status = "upgrade"
		vc.Advice = fmt.Sprintf("Upgrade: install clustral %s to match the coordinator.", theirs)
	case coord.LessThan(mine):
		vc.Status = "newer"
		vc.Advice = "This clustral is newer than the coordinator; that works, new features may not."
	default:
		vc.Status = "current"
		vc.Advice = "Up to date."
	}
	return vc
}
