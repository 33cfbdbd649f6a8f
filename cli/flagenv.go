package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"
)

// bindEnvAndFile fills every flag of c that was not set on the command line
// from, in order, the environment variable <prefix>_<FLAG_NAME> and the
// YAML config file named by --config (keys are the flag names). Flags win
// over the environment, which wins over the file.
func bindEnvAndFile(c *cobra.Command, prefix, configPath string) error {
	var file map[string]any
	if configPath != "" {
		b, err := os.ReadFile(configPath)
		if err != nil {
			return fmt.Errorf("read config file: %w", err)
		}
		j, err := yaml.YAMLToJSON(b)
		if err != nil {
			return fmt.Errorf("config file %s: %w", configPath, err)
		}
		if err := json.Unmarshal(j, &file); err != nil {
			return fmt.Errorf("config file %s must be a mapping of setting: value: %w", configPath, err)
		}
	}
	known := map[string]bool{}
	var errs []string
	c.Flags().VisitAll(func(f *pflag.Flag) {
		known[f.Name] = true
		if f.Changed || f.Name == "config" || f.Name == "help" {
			return
		}
		env := prefix + "_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if err := setFlag(f, v); err != nil {
				errs = append(errs, fmt.Sprintf("%s=%q: %v", env, v, err))
			}
			return
		}
		if v, ok := file[f.Name]; ok {
			var vals []string
			switch x := v.(type) {
			case []any:
				for _, e := range x {
					vals = append(vals, fmt.Sprint(e))
				}
			default:
				vals = []string{fmt.Sprint(x)}
			}
			for _, s := range vals {
				if err := f.Value.Set(s); err != nil {
					errs = append(errs, fmt.Sprintf("%s: %s: %v", configPath, f.Name, err))
				}
			}
		}
	})
	for k := range file {
		if !known[k] {
			errs = append(errs, fmt.Sprintf("%s: unknown setting %q (see --help for the settings)", configPath, k))
		}
	}
	if len(errs) > 0 {
		return usageError{fmt.Errorf("configuration: %s", strings.Join(errs, "; "))}
	}
	return nil
}

// setFlag sets f from an environment value; list flags take commas.
func setFlag(f *pflag.Flag, v string) error {
	if sv, ok := f.Value.(pflag.SliceValue); ok {
		return sv.Replace(strings.Split(v, ","))
	}
	return f.Value.Set(v)
}
