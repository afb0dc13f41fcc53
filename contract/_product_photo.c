/* The product_photo input recipe for greyscale models, compiled: the same arithmetic as contract/recipes.py
 * (which documents every step and stays the reference), operation for operation in IEEE double, so that it gives
 * the same bytes. tests/test_photos.py checks it against the numpy implementation; without a C compiler the
 * package installs without it and contract/recipes.py runs the numpy code.
 *
 * Built with -ffp-contract=off (setup in pyproject.toml): a fused multiply-add would round differently.
 *
 *   found, photo_doubt = product_photo(pixels, h, w, channels, height, width)
 *   pixels: h*w*channels bytes (row-major, channels 1 or 3), already reduced to the working size;
 *   found: height*width bytes, the model's input.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define WEIGHT_BITS 12
#define TRIM_MIN_CONTRAST 12.75
#define BORDER_SHARE 0.05
#define BORDER_CLUTTER_LIMIT 0.4
#define NOTHING_FOUND 2.0
#define CORNER_TOLERANCE 51.0
#define SPECK_SHARE 0.004
#define SHARPEN 5
#define LEVELS_PERCENTILE 99
#define REDUCING_GAP 3

static double round_half_up(double v) { return floor(v + 0.5); }
static double dmax(double a, double b) { return b > a ? b : a; }  /* Python's max(a, b): a unless b is larger */
static double dmin(double a, double b) { return b < a ? b : a; }

/* The k-th smallest of n values (an order statistic: the same whatever the algorithm): quickselect on a copy. */
static double order_statistic(const double *values, Py_ssize_t n, Py_ssize_t k, double *scratch) {
    memcpy(scratch, values, (size_t)n * sizeof(double));
    Py_ssize_t low = 0, high = n - 1;
    while (low < high) {
        double pivot = scratch[low + (high - low) / 2];
        Py_ssize_t i = low, j = high;
        while (i <= j) {
            while (scratch[i] < pivot) i++;
            while (scratch[j] > pivot) j--;
            if (i <= j) { double t = scratch[i]; scratch[i] = scratch[j]; scratch[j] = t; i++; j--; }
        }
        if (k <= j) high = j;
        else if (k >= i) low = i;
        else break;
    }
    return scratch[k];
}

/* Python's float floor division a // b for b > 0 (CPython's float_floor_div). */
static double py_floordiv(double vx, double wx) {
    double mod = fmod(vx, wx), div = (vx - mod) / wx, floordiv;
    if (mod) {
        if ((wx < 0) != (mod < 0)) div -= 1.0;
    }
    if (div) {
        floordiv = floor(div);
        if (div - floordiv > 0.5) floordiv += 1.0;
    } else {
        floordiv = copysign(0.0, vx / wx);
    }
    return floordiv;
}

/* recipes._solve: Gaussian elimination with partial pivoting, 6 unknowns, `channels` right-hand sides. */
static void solve(double m[6][6], double rhs[6][3], int channels, double out[3][6]) {
    const int size = 6;
    for (int col = 0; col < size; col++) {
        int pivot = col;
        for (int r = col + 1; r < size; r++)
            if (fabs(m[r][col]) > fabs(m[pivot][col])) pivot = r;
        if (fabs(m[pivot][col]) < 1e-9) {
            for (int r = 0; r < size; r++) m[r][col] = 0.0;
            for (int k = 0; k < size; k++) m[col][k] = k == col ? 1.0 : 0.0;
            for (int c = 0; c < channels; c++) rhs[col][c] = 0.0;
            continue;
        }
        for (int k = 0; k < size; k++) { double t = m[col][k]; m[col][k] = m[pivot][k]; m[pivot][k] = t; }
        for (int c = 0; c < channels; c++) { double t = rhs[col][c]; rhs[col][c] = rhs[pivot][c]; rhs[pivot][c] = t; }
        for (int r = col + 1; r < size; r++) {
            double factor = m[r][col] / m[col][col];
            if (factor == 0.0) continue;
            for (int k = col; k < size; k++) m[r][k] = m[r][k] - factor * m[col][k];
            for (int c = 0; c < channels; c++) rhs[r][c] = rhs[r][c] - factor * rhs[col][c];
        }
    }
    for (int c = 0; c < channels; c++) {
        for (int r = size - 1; r >= 0; r--) {
            double acc = rhs[r][c];
            for (int k = r + 1; k < size; k++) acc = acc - m[r][k] * out[c][k];
            out[c][r] = acc / m[r][r];
        }
    }
}

/* recipes._fit on the band points where use[i] is set: the normal equations' entries are sums of whole numbers. */
static void fit(Py_ssize_t n, const double *terms /* 6 x n */, const double *samples /* channels x n */,
                const unsigned char *use, int channels, double out[3][6]) {
    double m[6][6] = {{0}}, rhs[6][3] = {{0}};
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!use[i]) continue;
        for (int j = 0; j < 6; j++) {
            double tj = terms[j * n + i];
            for (int k = 0; k < 6; k++) m[j][k] += tj * terms[k * n + i];
            for (int c = 0; c < channels; c++) rhs[j][c] += tj * samples[c * n + i];
        }
    }
    solve(m, rhs, channels, out);
}

static double surface(const double c[6], double x, double y) {
    return ((((c[0] + c[1] * x) + c[2] * y) + c[3] * (x * x)) + c[4] * (y * y)) + c[5] * (x * y);
}

static double luma(const double *v, int channels, Py_ssize_t stride) {
    if (channels == 1) return v[0];
    return (v[0] * 0.299 + v[stride] * 0.587) + v[2 * stride] * 0.114;
}

/* recipes._neighbours: how many of each pixel's 3x3 neighbourhood are set (0 outside): sums along the rows, then
 * down the columns. `row` is scratch of h * w bytes. */
static void neighbours(const unsigned char *mask, int h, int w, unsigned char *row, unsigned char *out) {
    for (int y = 0; y < h; y++) {
        const unsigned char *m = mask + (Py_ssize_t)y * w;
        unsigned char *r = row + (Py_ssize_t)y * w;
        for (int x = 0; x < w; x++) r[x] = (unsigned char)((x > 0 ? m[x - 1] : 0) + m[x] + (x + 1 < w ? m[x + 1] : 0));
    }
    for (int y = 0; y < h; y++) {
        const unsigned char *above = y > 0 ? row + (Py_ssize_t)(y - 1) * w : NULL;
        const unsigned char *here = row + (Py_ssize_t)y * w, *below = y + 1 < h ? row + (Py_ssize_t)(y + 1) * w : NULL;
        unsigned char *o = out + (Py_ssize_t)y * w;
        for (int x = 0; x < w; x++) o[x] = (unsigned char)((above ? above[x] : 0) + here[x] + (below ? below[x] : 0));
    }
}

/* recipes._main_run: keep only the span of the largest group of set flags (gaps shorter than a tenth join). */
static void main_run(unsigned char *flags, int length) {
    int gap = length / 10 > 2 ? length / 10 : 2, first = -1, start = 0, previous = 0, best_start = 0, best_end = 0;
    for (int i = 0; i < length; i++) {
        if (!flags[i]) continue;
        if (first < 0) {
            first = start = previous = best_start = best_end = i;
            continue;
        }
        if (i - previous > gap) start = i;
        previous = i;
        if (previous - start > best_end - best_start) { best_start = start; best_end = previous; }
    }
    if (first < 0) return;
    for (int i = 0; i < length; i++) flags[i] = i >= best_start && i <= best_end;
}

/* recipes._weights: integer weights (size_out x size_in) of the antialiased triangle filter. */
static void weights(int size_in, double start, double stop, int size_out, int64_t *out) {
    double scale = (stop - start) / size_out, support = dmax(scale, 1.0);
    memset(out, 0, (size_t)size_out * size_in * sizeof(int64_t));
    for (int x = 0; x < size_out; x++) {
        double centre = start + ((double)x + 0.5) * scale;
        double low = dmax(floor(centre - support + 0.5), 0.0), high = dmin(floor(centre + support + 0.5), size_in);
        double total = 0.0;
        for (int i = (int)low; i < (int)high; i++)
            total = total + dmax(0.0, 1.0 - fabs((((double)i + 0.5) - centre) / support));
        if (total <= 0.0) {
            double nearest = floor(centre);
            int index = nearest < 0 ? 0 : (int)nearest;
            out[x * size_in + (index > size_in - 1 ? size_in - 1 : index)] = 1 << WEIGHT_BITS;
            continue;
        }
        for (int i = (int)low; i < (int)high; i++) {
            double value = dmax(0.0, 1.0 - fabs((((double)i + 0.5) - centre) / support));
            out[x * size_in + i] = (int64_t)floor(value / total * (double)(1 << WEIGHT_BITS) + 0.5);
        }
    }
}

/* [first, last + 1) of the non-zero entries of a row of n weights (an empty row: [0, 0)). */
static void span(const int64_t *row, int n, int *found) {
    int first = 0, last = n;
    while (first < n && row[first] == 0) first++;
    while (last > first && row[last - 1] == 0) last--;
    found[0] = first;
    found[1] = last;
}

/* recipes.resample for one channel of uint8 pixels (h x w), the whole picture as the window. */
static int resample(const unsigned char *pixels, int h, int w, int out_w, int out_h, unsigned char *out) {
    double left = 0.0, top = 0.0, right = w, bottom = h;
    int factor = (int)py_floordiv(dmin((right - left) / out_w, (bottom - top) / out_h), REDUCING_GAP);
    unsigned char *reduced = NULL;
    if (factor >= 2) {  /* recipes.reduce: box average over factor x factor blocks, rounded */
        if (factor > h) factor = h;
        if (factor > w) factor = w;
    }
    if (factor >= 2) {
        int rh = h / factor, rw = w / factor, area = factor * factor;
        reduced = malloc((size_t)rh * rw);
        if (!reduced) return -1;
        for (int y = 0; y < rh; y++)
            for (int x = 0; x < rw; x++) {
                int64_t sum = 0;
                for (int dy = 0; dy < factor; dy++)
                    for (int dx = 0; dx < factor; dx++) sum += pixels[(y * factor + dy) * w + x * factor + dx];
                reduced[y * rw + x] = (unsigned char)((sum + area / 2) / area);
            }
        left = left / factor; top = top / factor;
        right = dmin(right / factor, rw); bottom = dmin(bottom / factor, rh);
        pixels = reduced; h = rh; w = rw;
    }
    int64_t *across = malloc((size_t)out_w * w * sizeof(int64_t)), *down = malloc((size_t)out_h * h * sizeof(int64_t));
    int64_t *rows = malloc((size_t)out_h * w * sizeof(int64_t));
    if (!across || !down || !rows) { free(across); free(down); free(rows); free(reduced); return -1; }
    weights(w, left, right, out_w, across);
    weights(h, top, bottom, out_h, down);
    /* Each output pixel reads a few input pixels: sums over the span of its non-zero weights (the zeros the dense
     * product of contract/recipes.py adds change nothing). */
    int *down_span = malloc((size_t)out_h * 2 * sizeof(int)), *across_span = malloc((size_t)out_w * 2 * sizeof(int));
    if (!down_span || !across_span) {
        free(down_span); free(across_span); free(across); free(down); free(rows); free(reduced);
        return -1;
    }
    for (int y = 0; y < out_h; y++) span(down + (Py_ssize_t)y * h, h, down_span + 2 * y);
    for (int x = 0; x < out_w; x++) span(across + (Py_ssize_t)x * w, w, across_span + 2 * x);
    for (int y = 0; y < out_h; y++)
        for (int x = 0; x < w; x++) {
            int64_t sum = 0;
            for (int j = down_span[2 * y]; j < down_span[2 * y + 1]; j++) sum += down[y * h + j] * pixels[j * w + x];
            rows[y * w + x] = sum;
        }
    for (int y = 0; y < out_h; y++) {
        int64_t down_sum = 0;
        for (int j = down_span[2 * y]; j < down_span[2 * y + 1]; j++) down_sum += down[y * h + j];
        for (int x = 0; x < out_w; x++) {
            int64_t total = 0, across_sum = 0;
            for (int i = across_span[2 * x]; i < across_span[2 * x + 1]; i++) {
                total += rows[y * w + i] * across[x * w + i];
                across_sum += across[x * w + i];
            }
            int64_t area = down_sum * across_sum, value = (total + area / 2) / area;
            out[y * out_w + x] = (unsigned char)(value < 0 ? 0 : value > 255 ? 255 : value);
        }
    }
    free(down_span); free(across_span);
    free(across); free(down); free(rows); free(reduced);
    return 0;
}

static PyObject *product_photo(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer buffer;
    int h, w, channels, height, width;
    if (!PyArg_ParseTuple(args, "y*iiiii", &buffer, &h, &w, &channels, &height, &width)) return NULL;
    if ((channels != 1 && channels != 3) || h < 1 || w < 1 || height < 1 || width < 1 ||
        buffer.len != (Py_ssize_t)h * w * channels) {
        PyBuffer_Release(&buffer);
        PyErr_SetString(PyExc_ValueError, "product_photo: pixels must be h*w*channels bytes, channels 1 or 3");
        return NULL;
    }
    const unsigned char *pixels = buffer.buf;
    Py_ssize_t plane = (Py_ssize_t)h * w;
    double *values = malloc((size_t)plane * channels * sizeof(double));
    double *background = malloc((size_t)plane * channels * sizeof(double));
    double *difference = malloc((size_t)plane * sizeof(double));
    double *scratch = malloc((size_t)plane * channels * sizeof(double));
    unsigned char *mask = malloc((size_t)plane), *around = malloc((size_t)plane), *strength = malloc((size_t)plane);
    unsigned char *rows = malloc((size_t)h), *cols = malloc((size_t)w), *fitted = malloc((size_t)height * width);
    PyObject *result = NULL;
    /* the band: row-major band points, their terms and samples */
    double *terms = NULL, *samples = NULL, *residual = NULL;
    unsigned char *keep = NULL, *tighter = NULL;
    if (!values || !background || !difference || !scratch || !mask || !around || !strength || !rows || !cols ||
        !fitted) { PyErr_NoMemory(); goto done; }
    for (int c = 0; c < channels; c++)
        for (Py_ssize_t i = 0; i < plane; i++) values[c * plane + i] = pixels[i * channels + c];

    int b = (int)round_half_up(BORDER_SHARE * (h < w ? h : w));
    if (b < 1) b = 1;
#define IN_BAND(y, x) ((y) < b || (y) >= h - b || (x) < b || (x) >= w - b)
#define IN_CORNER(y, x) (((y) < b || (y) >= h - b) && ((x) < b || (x) >= w - b))
    Py_ssize_t n = 0, corners = 0;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) { n += IN_BAND(y, x); corners += IN_CORNER(y, x); }
    double coefficients[3][6] = {{0}};
    terms = malloc((size_t)n * 6 * sizeof(double)); samples = malloc((size_t)n * channels * sizeof(double));
    residual = malloc((size_t)n * sizeof(double)); keep = malloc((size_t)n); tighter = malloc((size_t)n);
    if (!terms || !samples || !residual || !keep || !tighter) { PyErr_NoMemory(); goto done; }
    {
        Py_ssize_t i = 0;
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                if (!IN_BAND(y, x)) continue;
                double fx = x, fy = y;
                terms[0 * n + i] = 1.0; terms[1 * n + i] = fx; terms[2 * n + i] = fy;
                terms[3 * n + i] = fx * fx; terms[4 * n + i] = fy * fy; terms[5 * n + i] = fx * fy;
                for (int c = 0; c < channels; c++) samples[c * n + i] = values[c * plane + (Py_ssize_t)y * w + x];
                i++;
            }
    }
    /* recipes._background */
    if (n < 12) {
        for (int c = 0; c < channels; c++) {
            coefficients[c][0] = order_statistic(values + c * plane, plane, (plane - 1) / 2, scratch);
        }
    } else {
        double corner[3];
        for (int c = 0; c < channels; c++) {
            Py_ssize_t k = 0;
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++)
                    if (IN_CORNER(y, x)) difference[k++] = values[c * plane + (Py_ssize_t)y * w + x];
            corner[c] = order_statistic(difference, corners, (corners - 1) / 2, scratch);
        }
        Py_ssize_t kept = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            double far = fabs(samples[i] - corner[0]);
            for (int c = 1; c < channels; c++) far = dmax(far, fabs(samples[c * n + i] - corner[c]));
            keep[i] = far <= CORNER_TOLERANCE;
            kept += keep[i];
        }
        if (kept < 12) { memset(keep, 1, (size_t)n); kept = n; }
        fit(n, terms, samples, keep, channels, coefficients);
        for (Py_ssize_t i = 0; i < n; i++) {
            double far = 0.0;
            for (int c = 0; c < channels; c++) {
                const double *k = coefficients[c];
                double at = ((((k[0] + k[1] * terms[n + i]) + k[2] * terms[2 * n + i]) + k[3] * terms[3 * n + i]) +
                             k[4] * terms[4 * n + i]) + k[5] * terms[5 * n + i];
                far = c == 0 ? fabs(samples[i] - at) : dmax(far, fabs(samples[c * n + i] - at));
            }
            residual[i] = far;
        }
        Py_ssize_t k = 0;
        for (Py_ssize_t i = 0; i < n; i++) if (keep[i]) difference[k++] = residual[i];
        double cutoff = dmax(4.4478 * order_statistic(difference, k, (k - 1) / 2, scratch), TRIM_MIN_CONTRAST);
        Py_ssize_t tight = 0;
        int same = 1;
        for (Py_ssize_t i = 0; i < n; i++) {
            tighter[i] = residual[i] <= cutoff;
            tight += tighter[i];
            same &= tighter[i] == keep[i];
        }
        if (tight >= 12 && !same) fit(n, terms, samples, tighter, channels, coefficients);
    }
    /* recipes._evaluate and the centre's colour */
    {  /* surface() at every pixel: its terms that depend on x alone or y alone computed once per column and row */
        double *across_terms = malloc((size_t)w * 2 * sizeof(double));
        double *down_terms = malloc((size_t)h * 2 * sizeof(double));
        if (!across_terms || !down_terms) { free(across_terms); free(down_terms); PyErr_NoMemory(); goto done; }
        for (int c = 0; c < channels; c++) {
            const double *k = coefficients[c];
            for (int x = 0; x < w; x++) {
                double fx = x;
                across_terms[2 * x] = k[0] + k[1] * fx;
                across_terms[2 * x + 1] = k[3] * (fx * fx);
            }
            for (int y = 0; y < h; y++) {
                double fy = y;
                down_terms[2 * y] = k[2] * fy;
                down_terms[2 * y + 1] = k[4] * (fy * fy);
            }
            for (int y = 0; y < h; y++) {
                double *row = background + c * plane + (Py_ssize_t)y * w, fy = y, cy = down_terms[2 * y];
                double cyy = down_terms[2 * y + 1];
                for (int x = 0; x < w; x++)
                    row[x] = (((across_terms[2 * x] + cy) + across_terms[2 * x + 1]) + cyy) + k[5] * ((double)x * fy);
            }
        }
        free(across_terms); free(down_terms);
    }
    double centre[3];
    for (int c = 0; c < channels; c++) centre[c] = surface(coefficients[c], (w - 1) / 2.0, (h - 1) / 2.0);
    int light = luma(centre, channels, 1) >= 128;
    /* recipes._garment */
    for (Py_ssize_t i = 0; i < plane; i++) {
        double far = fabs(values[i] - background[i]);
        for (int c = 1; c < channels; c++) far = dmax(far, fabs(values[c * plane + i] - background[c * plane + i]));
        difference[i] = far;
    }
    Py_ssize_t clutter_count = 0;
    {
        Py_ssize_t i = 0;
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                if (IN_BAND(y, x)) {
                    residual[i] = difference[(Py_ssize_t)y * w + x];
                    clutter_count += residual[i++] > TRIM_MIN_CONTRAST;
                }
    }
    double clutter = (double)clutter_count / (double)n;
    double low = order_statistic(residual, n, n / 4, scratch), middle = order_statistic(residual, n, n / 2, scratch);
    double high = order_statistic(residual, n, 3 * n / 4, scratch);
    double noise = (high - low) / 1.349;
    /* recipes._otsu */
    int64_t histogram[256] = {0};
    for (Py_ssize_t i = 0; i < plane; i++)  /* a difference is finite and >= 0; anything else counts as 0 */
        histogram[difference[i] >= 255.0 ? 255 : difference[i] > 0.0 ? (int)difference[i] : 0]++;
    int64_t count = 0, moment = 0, total = 0, mean_total = 0;
    for (int i = 0; i < 256; i++) { total += histogram[i]; mean_total += histogram[i] * i; }
    double best = 0.0, best_value = 0.0;
    for (int i = 0; i < 255; i++) {
        count += histogram[i]; moment += histogram[i] * i;
        double weight = (double)count, mean = (double)moment;
        double spread = weight * ((double)total - weight);
        double diff = (double)mean_total * weight - mean * (double)total;
        double between = spread > 0.0 ? diff * diff / spread : -1.0;
        if (i == 0 || between > best_value) { best_value = between; best = i; }
    }
    double threshold = dmax(dmax(TRIM_MIN_CONTRAST, middle + 4.0 * noise), 0.5 * best);
    int any = 0;
    for (Py_ssize_t i = 0; i < plane; i++) mask[i] = difference[i] > threshold;
    neighbours(mask, h, w, strength, around);
    for (Py_ssize_t i = 0; i < plane; i++) { mask[i] = mask[i] && around[i] >= 3; any |= mask[i]; }
    if (any) {
        int minimum = (int)floor(SPECK_SHARE * (h > w ? h : w));
        if (minimum < 1) minimum = 1;
        for (int y = 0; y < h; y++) {
            int s = 0;
            for (int x = 0; x < w; x++) s += mask[y * w + x];
            rows[y] = s >= minimum;
        }
        for (int x = 0; x < w; x++) {
            int s = 0;
            for (int y = 0; y < h; y++) s += mask[y * w + x];
            cols[x] = s >= minimum;
        }
        main_run(rows, h);
        main_run(cols, w);
        any = 0;
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                mask[y * w + x] = mask[y * w + x] && rows[y] && cols[x];
                any |= mask[y * w + x];
            }
    }
    neighbours(mask, h, w, strength, around);
    double photo_doubt = any ? clutter / BORDER_CLUTTER_LIMIT : NOTHING_FOUND;
    int top = 0, bottom = h, left = 0, right = w;
    if (any) {
        top = h; bottom = 0; left = w; right = 0;
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                if (mask[y * w + x]) {
                    if (y < top) top = y;
                    if (y + 1 > bottom) bottom = y + 1;
                    if (x < left) left = x;
                    if (x + 1 > right) right = x + 1;
                }
    }
    int crop_w = right - left, crop_h = bottom - top;
    double scale = dmin((double)width / crop_w, (double)height / crop_h);
    int fitted_w = (int)round_half_up(crop_w * scale), fitted_h = (int)round_half_up(crop_h * scale);
    fitted_w = fitted_w > width ? width : fitted_w < 1 ? 1 : fitted_w;
    fitted_h = fitted_h > height ? height : fitted_h < 1 ? 1 : fitted_h;
    /* recipes._strength and recipes._levels on the garment's box */
    int strength_histogram[256] = {0};
    Py_ssize_t garment = 0;
    for (int y = 0; y < crop_h; y++)
        for (int x = 0; x < crop_w; x++) {
            Py_ssize_t at = (Py_ssize_t)(top + y) * w + left + x;
            double l = luma(values + at, channels, plane), base = dmax(luma(background + at, channels, plane), 1.0), s;
            if (light) s = 1.0 - l / base;
            else s = (l - base) / dmax(255.0 - base, 1.0);
            s = dmin(dmax(s, 0.0), 1.0);
            double soft = dmin(around[at] / 3.0, 1.0);
            unsigned char v = (unsigned char)floor(s * 255.0 * soft + 0.5);
            strength[y * crop_w + x] = v;
            if (v) { strength_histogram[v]++; garment++; }
        }
    if (garment) {
        Py_ssize_t rank = (garment - 1) * LEVELS_PERCENTILE / 100, seen = 0;
        int level = 1;
        for (; level < 256; level++) { seen += strength_histogram[level]; if (seen > rank) break; }
        for (Py_ssize_t i = 0; i < (Py_ssize_t)crop_h * crop_w; i++) {
            int64_t v = ((int64_t)strength[i] * 255 + level / 2) / level;
            strength[i] = (unsigned char)(v > 255 ? 255 : v);
        }
    }
    unsigned char *small = malloc((size_t)fitted_w * fitted_h);
    if (!small || resample(strength, crop_h, crop_w, fitted_w, fitted_h, small) < 0) {
        free(small); PyErr_NoMemory(); goto done;
    }
    if (light) {  /* recipes._sharpen: pixel + 5/8 (pixel - its 3x3 Gaussian blur), edges repeated */
        unsigned char *sharp = malloc((size_t)fitted_w * fitted_h);
        if (!sharp) { free(small); PyErr_NoMemory(); goto done; }
        for (int y = 0; y < fitted_h; y++)
            for (int x = 0; x < fitted_w; x++) {
                int64_t blur = 0;
                static const int kernel[3][3] = {{1, 2, 1}, {2, 4, 2}, {1, 2, 1}};
                for (int dy = -1; dy <= 1; dy++)
                    for (int dx = -1; dx <= 1; dx++) {
                        int yy = y + dy < 0 ? 0 : y + dy >= fitted_h ? fitted_h - 1 : y + dy;
                        int xx = x + dx < 0 ? 0 : x + dx >= fitted_w ? fitted_w - 1 : x + dx;
                        blur += kernel[dy + 1][dx + 1] * small[yy * fitted_w + xx];
                    }
                int64_t p = small[y * fitted_w + x];
                int64_t v = 128 * p + SHARPEN * (16 * p - blur) + 64;
                v = v >= 0 ? v / 128 : -((-v + 127) / 128);  /* floor division */
                sharp[y * fitted_w + x] = (unsigned char)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
        free(small);
        small = sharp;
    }
    memset(fitted, 0, (size_t)height * width);
    int paste_top = (height - fitted_h) / 2, paste_left = (width - fitted_w) / 2;
    for (int y = 0; y < fitted_h; y++) memcpy(fitted + (Py_ssize_t)(paste_top + y) * width + paste_left,
                                              small + (Py_ssize_t)y * fitted_w, (size_t)fitted_w);
    free(small);
    result = Py_BuildValue("(y#d)", (const char *)fitted, (Py_ssize_t)height * width, photo_doubt);
done:
    free(values); free(background); free(difference); free(scratch); free(mask); free(around); free(strength);
    free(rows); free(cols); free(fitted); free(terms); free(samples); free(residual); free(keep); free(tighter);
    PyBuffer_Release(&buffer);
    return result;
}

static PyMethodDef methods[] = {
    {"product_photo", product_photo, METH_VARARGS,
     "product_photo(pixels, h, w, channels, height, width) -> (bytes, photo_doubt): contract/recipes.py's "
     "product_photo for a greyscale model, compiled."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_product_photo", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__product_photo(void) { return PyModule_Create(&module); }
