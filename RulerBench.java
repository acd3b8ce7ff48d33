// Runs event-ruler's Machine over the rule sets and events that skiff's bench_patterns wrote,
// so both engines match the same events against the same rules in the same run.
//
// Input (written by `bench_patterns --write DIR`): DIR/rules.tsv (set, rule name, pattern JSON
// per line) and DIR/events.jsonl (one event per line). For each set, in file order: add its
// rules to a new Machine, match every event (warm-up passes, then measured passes), print
// "SET events/s" with the median pass, and write each rule's match count to DIR/counts-ruler.tsv
// for bench_patterns to compare with its own.
import software.amazon.event.ruler.Machine;

import java.io.BufferedReader;
import java.io.FileReader;
import java.io.PrintWriter;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

public final class RulerBench {
    public static void main(String[] args) throws Exception {
        String dir = args[0];
        int warmups = args.length > 1 ? Integer.parseInt(args[1]) : 2;
        int passes = args.length > 2 ? Integer.parseInt(args[2]) : 5;
        Map<String, List<String[]>> sets = new LinkedHashMap<>();
        try (BufferedReader r = new BufferedReader(new FileReader(dir + "/rules.tsv"))) {
            for (String line; (line = r.readLine()) != null; ) {
                String[] f = line.split("\t", 3);
                sets.computeIfAbsent(f[0], k -> new ArrayList<>()).add(new String[] {f[1], f[2]});
            }
        }
        List<String> events = new ArrayList<>();
        try (BufferedReader r = new BufferedReader(new FileReader(dir + "/events.jsonl"))) {
            for (String line; (line = r.readLine()) != null; ) {
                events.add(line);
            }
        }
        System.out.printf("event-ruler: %d events, %d rule sets, %d warm-up + %d measured passes%n",
                events.size(), sets.size(), warmups, passes);
        try (PrintWriter out = new PrintWriter(dir + "/counts-ruler.tsv")) {
            for (Map.Entry<String, List<String[]>> set : sets.entrySet()) {
                Machine machine = new Machine();
                for (String[] rule : set.getValue()) {
                    machine.addRule(rule[0], rule[1]);
                }
                Map<String, Integer> counts = new HashMap<>();
                double[] eps = new double[passes];
                for (int pass = 0; pass < warmups + passes; pass++) {
                    counts.clear();
                    long start = System.nanoTime();
                    for (String event : events) {
                        for (String name : machine.rulesForJSONEvent(event)) {
                            counts.merge(name, 1, Integer::sum);
                        }
                    }
                    double seconds = (System.nanoTime() - start) / 1e9;
                    if (pass >= warmups) {
                        eps[pass - warmups] = events.size() / seconds;
                    }
                }
                Arrays.sort(eps);
                System.out.printf("%s %.0f events/s%n", set.getKey(), eps[passes / 2]);
                for (String[] rule : set.getValue()) {
                    out.printf("%s\t%s\t%d%n", set.getKey(), rule[0], counts.getOrDefault(rule[0], 0));
                }
                out.flush();
            }
        }
    }
}
