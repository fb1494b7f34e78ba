# The comparison of the transformer_lm example, from its CSV files.
# Usage: gnuplot -e "outdir='DIR'; optimizers='muon normuon adamw'; seeds=3; target=1.6; swept=1" curves.gp
# Reads DIR/curves.csv (validation loss per evaluation, mean and min..max
# over the seeds), DIR/sweep.csv and DIR/timing.csv; writes DIR/curves.png.
if (!exists("outdir")) outdir = "transformer_lm_out"
if (!exists("optimizers")) optimizers = "muon normuon adamw"
if (!exists("seeds")) seeds = 3
if (!exists("target")) target = NaN
if (!exists("swept")) swept = 1

set terminal pngcairo size 1300,850 font ",10" noenhanced
set output outdir."/curves.png"
set datafile separator ","
set grid
set multiplot layout 2,2 title sprintf("byte-level GPT on fortunes: hybrid Muon / NorMuon vs AdamW (each at its swept lr; mean of %d seed(s), bars: min..max)", seeds)

name(i) = word(optimizers, i)
curves = outdir."/curves.csv"
finite(v) = (v == v && abs(v) < 1e30) ? v : NaN
stats curves using 2 skip 1 nooutput  # before any range is set: stats honours them
last_step = STATS_max
stats curves using 3 skip 1 nooutput
# Cut the first evaluations' high losses off, at 40% of the way up from the
# lowest (3.5 in the recorded run; a --quick run's losses all lie higher).
loss_top = STATS_min + 0.4 * (STATS_max - STATS_min)

set title "validation loss (nats/byte); dashed: the target, AdamW's mean final loss"
set xlabel "step"
set ylabel "validation loss"
set key top right
set yrange [*:loss_top]
plot for [i=1:words(optimizers)] curves using 2:(strcol(1) eq name(i) ? finite($3) : NaN):4:5 \
       skip 1 with yerrorlines lw 2 pt 7 ps 0.6 lc i title name(i), \
     target with lines dt 2 lc rgb "black" title "target"

set title "the same, last 40% of the run"
set xrange [0.6 * last_step:last_step * 1.02]
set autoscale y
plot for [i=1:words(optimizers)] curves using 2:(strcol(1) eq name(i) ? finite($3) : NaN):4:5 \
       skip 1 with yerrorlines lw 2 pt 7 ps 0.6 lc i title name(i), \
     target with lines dt 2 lc rgb "black" title "target"
set autoscale x

set title "lr sweep (seed 1, the full step budget; hybrids: the Muon part's lr)"
set xlabel "learning rate"
set logscale x
set ylabel "final validation loss"
set yrange [*:*]
if (swept) {
  plot for [i=1:words(optimizers)] outdir."/sweep.csv" using \
         (strcol(1) eq name(i) ? $2 : NaN):(finite($4)) skip 1 \
         with linespoints lw 2 pt 7 lc i title name(i)
} else {
  unset logscale x
  set xrange [0:1]
  set yrange [0:1]
  set label 1 "no sweep in this run (--sweep off, --quick or fixed lrs)" at 0.5, 0.5 center
  plot NaN notitle
  unset label 1
  set autoscale xy
}
unset logscale x

set title "time per step, interleaved (whole step; thin: the optimizer's step() alone)"
set xlabel "repetition"
set ylabel "milliseconds"
set autoscale xy
set yrange [0:*]
timing = outdir."/timing.csv"
if (system("[ -s '".timing."' ] && echo 1 || echo 0") + 0 == 0) {
  set xrange [0:1]
  set yrange [0:1]
  set label 2 "no timing phase in this run (--timing-reps 0)" at 0.5, 0.5 center
  plot NaN notitle
} else {
plot for [i=1:words(optimizers)] timing using \
       1:(strcol(2) eq name(i) ? $3 : NaN) skip 1 with points pt 7 ps 0.5 lc i title name(i), \
     for [i=1:words(optimizers)] timing using \
       1:(strcol(2) eq name(i) ? $4 : NaN) skip 1 with points pt 1 ps 0.5 lc i notitle
}

unset multiplot
