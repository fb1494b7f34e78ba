# Curves of the libtorch Fashion-MNIST example, from its CSV files.
# Usage: gnuplot -e "outdir='DIR'; optimizers='muon adamw sgd'; seeds=3; epochs=6; swept=1" plot.gp
# Reads DIR/epochs_<optimizer>.csv (per epoch, over the seeds) and
# DIR/sweep.csv; writes DIR/curves.png: training loss, test loss and test
# accuracy per epoch (mean over the seeds, bars from the lowest to the
# highest seed), and the lr sweep (validation loss against lr).
if (!exists("outdir")) outdir = "libtorch_fashion_mnist_out"
if (!exists("optimizers")) optimizers = "muon adamw sgd"
if (!exists("seeds")) seeds = 3
if (!exists("epochs")) epochs = 6
if (!exists("swept")) swept = 1

set terminal pngcairo size 1300,850 font ",10" noenhanced
set output outdir."/curves.png"
set datafile separator ","
set grid
set multiplot layout 2,2 title sprintf("Fashion-MNIST CNN in libtorch: hybrid Muon + AdamW vs AdamW vs SGD (each at its chosen lr; mean of %d seed(s), bars: min..max)", seeds)

file(name) = outdir."/epochs_".name.".csv"
set xlabel "epoch"
set xtics 1
set xrange [0.5:epochs + 0.5]

set ylabel "cross-entropy loss"
set title "training loss (mean over each epoch's batches)"
set key top right
plot for [i=1:words(optimizers)] file(word(optimizers, i)) using 1:2 skip 1 \
       with linespoints lw 2 pt 7 lc i title word(optimizers, i)

set title "test loss"
plot for [i=1:words(optimizers)] file(word(optimizers, i)) using 1:3:4:5 skip 1 \
       with yerrorlines lw 2 pt 7 lc i title word(optimizers, i)

set ylabel "test accuracy (%)"
set title "test accuracy"
set key bottom right
plot for [i=1:words(optimizers)] file(word(optimizers, i)) using 1:($6*100):($7*100):($8*100) \
       skip 1 with yerrorlines lw 2 pt 7 lc i title word(optimizers, i)

# The sweep: one row per run; rows of other optimizers become undefined
# points, and each optimizer's rows are contiguous, so its line is unbroken.
set title "lr sweep (one epoch on a subset; muon: the Muon part's lr)"
set xlabel "learning rate"
set xtics autofreq
set xrange [*:*]
set logscale x
set ylabel "validation loss"
set key top right
set yrange [*:1]  # a diverged run (loss 2.3) leaves the panel at the top
sweep = outdir."/sweep.csv"
if (swept) {
  plot for [i=1:words(optimizers)] sweep using \
         (strcol(1) eq word(optimizers, i) ? $2 : NaN):4 skip 1 \
         with linespoints lw 2 pt 7 lc i title word(optimizers, i)
} else {
  unset logscale x
  set xrange [0:1]
  set yrange [0:1]
  set label 1 "no sweep in this run (--sweep off, --quick or fixed lrs)" at 0.5, 0.5 center
  plot NaN notitle
}

unset multiplot
