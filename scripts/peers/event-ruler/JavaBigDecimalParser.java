// Stand-in for ch.randelshofer.fastdoubleparser (published on Maven Central only, which this
// machine kind cannot reach): event-ruler calls this one method to read numbers. The JDK's
// parser is slower on long numbers, so event-ruler's numeric figures measured with it are a
// lower bound of what it does with the real library.
package ch.randelshofer.fastdoubleparser;

import java.math.BigDecimal;

public final class JavaBigDecimalParser {
    private JavaBigDecimalParser() {}

    public static BigDecimal parseBigDecimal(CharSequence s) {
        return new BigDecimal(s.toString());
    }
}
