// event-ruler's answer for each (pattern, event) case, to compare skiff's semantics with the
// reference matcher's: reads lines "PATTERN<TAB>EVENT" and prints, per line, "invalid" when
// event-ruler refuses the pattern, else "1" (matches) or "0". Run by scripts/pattern-conformance.
import software.amazon.event.ruler.Machine;

import java.io.BufferedReader;
import java.io.InputStreamReader;

public final class RulerCases {
    public static void main(String[] args) throws Exception {
        BufferedReader r = new BufferedReader(new InputStreamReader(System.in, "UTF-8"));
        StringBuilder out = new StringBuilder();
        for (String line; (line = r.readLine()) != null; ) {
            String[] f = line.split("\t", 2);
            Machine machine = new Machine();
            try {
                machine.addRule("r", f[0]);
            } catch (Exception e) {
                out.append("invalid\n");
                continue;
            }
            try {
                out.append(machine.rulesForJSONEvent(f[1]).isEmpty() ? "0\n" : "1\n");
            } catch (Exception e) {
                out.append("error\n");
            }
        }
        System.out.print(out);
    }
}
