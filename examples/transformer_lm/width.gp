# Width transfer of the transformer_lm example, from DIR/width.csv.
# Usage: gnuplot -e "outdir='DIR'; widths='64 128 256'; arms='muon-original muon-none adamw'" width.gp
# One panel per arm (Muon under each lr-by-shape rule, AdamW): the final
# validation loss against the lr, one curve per width, the best lr of each
# width circled. Writes DIR/width_transfer.png.
if (!exists("outdir")) outdir = "transformer_lm_out"
if (!exists("widths")) widths = "64 128 256"
if (!exists("arms")) arms = "muon-original muon-none adamw"

set terminal pngcairo size 1400,500 font ",10" noenhanced
set output outdir."/width_transfer.png"
set datafile separator ","
set grid
set logscale x
set xlabel "learning rate"
set ylabel "final validation loss"
set key bmargin center horizontal
set bmargin 5.5
set multiplot layout 1,words(arms) title "width transfer: final validation loss against lr at each d_model (same depth and heads; circles: each width's best lr)"

data = outdir."/width.csv"
finite(v) = (v == v && abs(v) < 1e30) ? v : NaN
arm(j) = word(arms, j)
width(i) = word(widths, i) + 0
describe(a) = a eq "adamw" ? "AdamW" : (a eq "muon-original" ? "Muon, lr by shape: original (default)" : (a eq "muon-none" ? "Muon, lr by shape: off (none)" : "Muon, lr by shape: ".a[6:]))

do for [j=1:words(arms)] {
  set title describe(arm(j))
  plot for [i=1:words(widths)] data using \
         (strcol(1) eq arm(j) && $2 == width(i) ? $3 : NaN):(finite($4)) skip 1 \
         with linespoints lw 2 pt 7 lc i title sprintf("d_model %d", width(i)), \
       for [i=1:words(widths)] data using \
         (strcol(1) eq arm(j) && $2 == width(i) && $5 == 1 ? $3 : NaN):(finite($4)) skip 1 \
         with points pt 6 ps 2.5 lw 2 lc i notitle
}
unset multiplot
